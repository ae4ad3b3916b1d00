"""Turns a scheduled batch into one forward pass and the sampled tokens.

The batch is flattened (batch_inputs.py): decodes first, then prefill chunks, every chunk's new
tokens end to end with their positions and the slots their K/V go to. A decode-only batch replays
a captured CUDA graph (cuda_graphs.py) when graphs are on; any other batch runs eagerly. Logits
are computed only at the last token of the chunks that sample.

Host syncs: none before the sampler's output. Inputs go to the device from pinned memory without
waiting, and the step ends with its one device-to-host copy: the sampled ids (with their
logprobs, when asked for) packed into one tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.engine.batch_inputs import TABLE_WIDTH_ALIGN, BatchInputs, build_batch_inputs
from services.engine.cuda_graphs import DecodeGraphs, DecodeInputs
from services.engine.kv_cache import KVCacheManager, cdiv
from services.engine.model.attention import AttentionMetadata
from services.engine.outputs import TokenLogprob
from services.engine.sampler import Sampler, SamplerOutput, SamplingRow, to_device
from services.engine.scheduler import ScheduledBatch


@dataclass(frozen=True)
class StepResult:
    """One entry per chunk that sampled, in batch order."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv: KVCacheManager, sampler: Sampler,
                 device: torch.device) -> None:
        self.model = model
        self.kv = kv
        self.sampler = sampler
        self.device = device
        self.graphs: DecodeGraphs | None = None
        self.num_graph_steps = 0
        self.num_eager_steps = 0

    def capture_graphs(self, max_num_seqs: int, max_model_len: int) -> float:
        """Capture the decode graphs (CUDA only); returns the seconds it took."""
        max_blocks = cdiv(cdiv(max_model_len, self.kv.block_size), TABLE_WIDTH_ALIGN) * TABLE_WIDTH_ALIGN
        self.graphs = DecodeGraphs(self.model, self.kv.kv_cache, max_num_seqs, max_blocks,
                                   self.kv.block_size)
        return self.graphs.capture()

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        inputs = build_batch_inputs(batch.chunks, self.kv.block_size)
        hidden = self._forward(inputs)
        ordered = [batch.chunks[i] for i in inputs.order]
        rows = [SamplingRow(c.request.params, len(c.request.output_token_ids))
                for c in ordered if c.samples]
        if not rows:
            return StepResult([], [])
        if not inputs.samples_every_row:
            hidden = hidden[self._to_device(inputs.sample_indices)]
        logits = self.model.compute_logits(hidden)
        result = _to_host(self.sampler(logits, rows), rows)
        return _in_batch_order(result, [i for i in inputs.order if batch.chunks[i].samples])

    def _forward(self, inputs: BatchInputs) -> torch.Tensor:
        if (self.graphs is not None and inputs.is_decode_only
                and self.graphs.fits(inputs.num_seqs, inputs.block_tables.shape[1])):
            self.num_graph_steps += 1
            return self.graphs.run(DecodeInputs(inputs.input_ids, inputs.positions,
                                                inputs.slot_mapping, inputs.seq_lens,
                                                inputs.block_tables))
        self.num_eager_steps += 1
        dev = self._to_device
        d = inputs.num_decodes
        meta = AttentionMetadata(
            query_start_loc=dev(inputs.query_start_loc), seq_lens=dev(inputs.seq_lens),
            block_tables=dev(inputs.block_tables), slot_mapping=dev(inputs.slot_mapping),
            max_query_len=inputs.max_query_len, max_seq_len=int(inputs.seq_lens.max()),
            num_decodes=d,
            prefill_query_start_loc=dev(inputs.query_start_loc[d:] - inputs.query_start_loc[d]))
        return self.model(dev(inputs.input_ids), dev(inputs.positions), self.kv.kv_cache, meta)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        return to_device(host, self.device)


def _in_batch_order(result: StepResult, sampling_chunks: list[int]) -> StepResult:
    """result lists the sampling chunks in flattened order (their batch indices in
    sampling_chunks); the scheduler expects them in batch order."""
    rank = sorted(range(len(sampling_chunks)), key=sampling_chunks.__getitem__)
    return StepResult([result.token_ids[k] for k in rank], [result.logprobs[k] for k in rank])


def _to_host(out: SamplerOutput, rows: list[SamplingRow]) -> StepResult:
    """The step's one device-to-host copy: ids alone, or ids packed with their logprobs (float64
    holds every token id exactly)."""
    if out.logprobs is None:
        return StepResult(out.token_ids.tolist(), [None] * len(rows))
    columns = [out.token_ids.double()[:, None], out.logprobs.double()[:, None]]
    if out.top_ids is not None:
        columns += [out.top_ids.double(), out.top_logprobs.double()]
    packed = torch.cat(columns, dim=1).cpu().tolist()
    max_n = out.top_ids.shape[1] if out.top_ids is not None else 0
    token_ids, logprobs = [], []
    for row, values in zip(rows, packed):
        token_id = int(values[0])
        token_ids.append(token_id)
        n = row.params.logprobs
        if n is None:
            logprobs.append(None)
            continue
        top = tuple((int(values[2 + j]), values[2 + max_n + j]) for j in range(n))
        logprobs.append(TokenLogprob(token_id, values[1], top))
    return StepResult(token_ids, logprobs)
