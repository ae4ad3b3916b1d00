"""Turns a scheduled batch into one forward pass and the sampled tokens.

The batch is flattened (batch_inputs.py): decodes first, then prefill chunks, every chunk's new
tokens end to end with their positions and the slots their K/V go to. A decode-only batch replays
a captured CUDA graph (cuda_graphs.py) when graphs are on, and so does a prefill-only batch of up
to a thousand tokens (prefill_graphs.py); any other batch of up to two thousand tokens replays
the pieces between its attentions (piecewise_graphs.py); larger ones run eagerly. Logits
are computed only at the last token of the chunks that sample.

Host syncs: none. `launch` queues the forward pass, the sampler and the one device-to-host copy
of the step (the sampled ids, packed with their logprobs when asked for) into pinned memory and
returns; inputs go to the device from pinned memory without waiting. `InFlightStep.result` is the
step's one wait, and the engine calls it only after the next batch is queued (engine.py)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from services.engine.batch_inputs import TABLE_WIDTH_ALIGN, BatchInputs, build_batch_inputs
from services.engine.cuda_graphs import DecodeGraphs, DecodeInputs
from services.engine.kv_cache import KVCacheManager, cdiv
from services.engine.model.attention import AttentionMetadata
from services.engine.model.linear import use_one_row_gemv
from services.engine.outputs import TokenLogprob
from services.engine.piecewise_graphs import PiecewiseGraphs
from services.engine.prefill_graphs import MAX_TOKENS as PREFILL_GRAPH_MAX_TOKENS
from services.engine.prefill_graphs import PrefillGraphs
from services.engine.sampler import Sampler, SamplerOutput, SamplingRow, to_device
from services.engine.request import PENDING_TOKEN
from services.engine.scheduler import ScheduledBatch


@dataclass(frozen=True)
class StepResult:
    """One entry per chunk that sampled, in batch order."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class InFlightStep:
    """A launched batch whose sampled ids are on their way to the host. `sampled` (device, in
    flattened order) feeds the inputs of the next batch for tokens still pending there; `result`
    waits for this batch alone."""

    def __init__(self, batch: ScheduledBatch, rows: list[SamplingRow], sampled: torch.Tensor,
                 sample_row: dict[str, int], host: torch.Tensor | None,
                 event: torch.cuda.Event | None, sampling_chunks: list[int], max_n: int) -> None:
        self.batch = batch
        self.rows = rows
        self.sampled = sampled
        self.sample_row = sample_row        # request id -> its row in `sampled`
        self._host = host
        self._event = event
        self._sampling_chunks = sampling_chunks
        self._max_n = max_n

    def result(self) -> StepResult:
        if self._host is None:
            return StepResult([], [])
        if self._event is not None:
            self._event.synchronize()
        result = _unpack(self._host, self.rows, self._max_n)
        return _in_batch_order(result, self._sampling_chunks)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv: KVCacheManager, sampler: Sampler,
                 device: torch.device) -> None:
        self.model = model
        self.kv = kv
        self.sampler = sampler
        self.device = device
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self.piecewise_graphs: PiecewiseGraphs | None = None
        self.num_graph_steps = 0            # decode steps replayed
        self.num_prefill_graph_steps = 0
        self.num_piecewise_steps = 0
        self.num_eager_steps = 0

    @property
    def num_graphs(self) -> int:
        return sum(g.num_graphs for g in (self.graphs, self.prefill_graphs, self.piecewise_graphs)
                   if g is not None)

    def capture_graphs(self, max_num_seqs: int, max_model_len: int, max_tokens: int) -> float:
        """Capture the decode, prefill and piecewise graphs (CUDA only); returns the seconds it
        took. max_tokens: the step's token budget. From here one-row products take the GEMV
        (linear.use_one_row_gemv): the captures' eager first runs compile it."""
        use_one_row_gemv(self.model)
        max_blocks = cdiv(max_model_len, self.kv.block_size)
        max_blocks = cdiv(max_blocks, TABLE_WIDTH_ALIGN) * TABLE_WIDTH_ALIGN
        pool = self.kv.kv_cache
        self.graphs = DecodeGraphs(self.model, pool, max_num_seqs, max_blocks, self.kv.block_size)
        self.prefill_graphs = PrefillGraphs(self.model, pool,
                                            min(max_tokens, PREFILL_GRAPH_MAX_TOKENS),
                                            max_num_seqs, max_blocks)
        self.piecewise_graphs = PiecewiseGraphs(self.model, pool, max_tokens)
        return sum(g.capture() for g in (self.graphs, self.prefill_graphs, self.piecewise_graphs))

    def run(self, batch: ScheduledBatch) -> StepResult:
        """Launch and wait (tokens all known on the host)."""
        return self.launch(batch, None).result()

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, previous: InFlightStep | None) -> InFlightStep:
        """Queue the batch's forward pass and sampling on the device, and the copy of the sampled
        ids to pinned host memory; no wait. Tokens still pending in the inputs (sampled by
        `previous`, not yet committed) are read from previous.sampled on the device."""
        inputs = build_batch_inputs(batch.chunks, self.kv.block_size)
        input_ids = self._input_ids(inputs, batch, previous)
        hidden = self._forward(inputs, input_ids)
        ordered = [batch.chunks[i] for i in inputs.order]
        sampling = [c for c in ordered if c.samples]
        sampling_chunks = [i for i in inputs.order if batch.chunks[i].samples]
        rows = [SamplingRow(c.request.params, len(c.request.output_token_ids)) for c in sampling]
        if not rows:
            return InFlightStep(batch, rows, torch.empty(0), {}, None, None, [], 0)
        if not inputs.samples_every_row:
            hidden = hidden[self._to_device(inputs.sample_indices)]
        out = self.sampler(self.model.compute_logits(hidden), rows)
        packed, max_n = _pack(out)
        if self.device.type == "cuda":
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = packed, None
        sample_row = {c.request.request_id: k for k, c in enumerate(sampling)}
        return InFlightStep(batch, rows, out.token_ids, sample_row, host, event, sampling_chunks,
                            max_n)

    def _input_ids(self, inputs: BatchInputs, batch: ScheduledBatch,
                   previous: InFlightStep | None) -> torch.Tensor:
        """The batch's token ids on the device, the pending ones taken from previous.sampled."""
        host = inputs.input_ids
        pending = (host == PENDING_TOKEN).nonzero().flatten().tolist()
        if not pending:
            return self._to_device(host)
        if previous is None:
            raise RuntimeError("a pending token with no batch in flight")
        query_start = inputs.query_start_loc.tolist()
        sources = []
        for row in pending:
            k = bisect.bisect_right(query_start, row) - 1     # the flattened chunk of this row
            sources.append(previous.sample_row[batch.chunks[inputs.order[k]].request.request_id])
        ids = self._to_device(host.clamp(min=0))
        rows_dev = self._to_device(torch.tensor(pending, dtype=torch.int64))
        ids[rows_dev] = previous.sampled[self._to_device(torch.tensor(sources, dtype=torch.int64))]
        return ids

    def _forward(self, inputs: BatchInputs, input_ids: torch.Tensor) -> torch.Tensor:
        if (self.graphs is not None and inputs.is_decode_only
                and self.graphs.fits(inputs.num_seqs, inputs.block_tables.shape[1])):
            self.num_graph_steps += 1
            return self.graphs.run(DecodeInputs(input_ids, inputs.positions, inputs.slot_mapping,
                                                inputs.seq_lens, inputs.block_tables))
        if self.prefill_graphs is not None:
            bucket = self.prefill_graphs.bucket(inputs)
            if bucket is not None:
                self.num_prefill_graph_steps += 1
                return self.prefill_graphs.run(bucket, inputs, input_ids)
        meta = self._metadata(inputs)
        if self.piecewise_graphs is not None:
            bucket = self.piecewise_graphs.bucket(inputs.input_ids.shape[0])
            if bucket is not None:
                self.num_piecewise_steps += 1
                # host positions: they go straight into the pieces' buffer, padded there
                return self.piecewise_graphs.run(bucket, input_ids, inputs.positions, meta)
        self.num_eager_steps += 1
        return self.model(input_ids, self._to_device(inputs.positions), self.kv.kv_cache, meta)

    def _metadata(self, inputs: BatchInputs) -> AttentionMetadata:
        dev = self._to_device
        d = inputs.num_decodes
        return AttentionMetadata(
            query_start_loc=dev(inputs.query_start_loc), seq_lens=dev(inputs.seq_lens),
            block_tables=dev(inputs.block_tables), slot_mapping=dev(inputs.slot_mapping),
            max_query_len=inputs.max_query_len, max_seq_len=int(inputs.seq_lens.max()),
            num_decodes=d,
            prefill_query_start_loc=dev(inputs.query_start_loc[d:] - inputs.query_start_loc[d]))

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        return to_device(host, self.device)


def _in_batch_order(result: StepResult, sampling_chunks: list[int]) -> StepResult:
    """result lists the sampling chunks in flattened order (their batch indices in
    sampling_chunks); the scheduler expects them in batch order."""
    rank = sorted(range(len(sampling_chunks)), key=sampling_chunks.__getitem__)
    return StepResult([result.token_ids[k] for k in rank], [result.logprobs[k] for k in rank])


def _pack(out: SamplerOutput) -> tuple[torch.Tensor, int]:
    """The sampled ids alone, or packed with their logprobs in float64 (which holds every token id
    exactly): one tensor, so the step has one device-to-host copy."""
    if out.logprobs is None:
        return out.token_ids, 0
    columns = [out.token_ids.double()[:, None], out.logprobs.double()[:, None]]
    if out.top_ids is not None:
        columns += [out.top_ids.double(), out.top_logprobs.double()]
    max_n = out.top_ids.shape[1] if out.top_ids is not None else 0
    return torch.cat(columns, dim=1), max_n


def _unpack(host: torch.Tensor, rows: list[SamplingRow], max_n: int) -> StepResult:
    if host.dim() == 1:
        return StepResult(host.tolist(), [None] * len(rows))
    token_ids, logprobs = [], []
    for row, values in zip(rows, host.tolist()):
        token_id = int(values[0])
        token_ids.append(token_id)
        n = row.params.logprobs
        if n is None:
            logprobs.append(None)
            continue
        top = tuple((int(values[2 + j]), values[2 + max_n + j]) for j in range(n))
        logprobs.append(TokenLogprob(token_id, values[1], top))
    return StepResult(token_ids, logprobs)
