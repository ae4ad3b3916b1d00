"""Turns a scheduled batch into one forward pass and the sampled tokens.

The batch is flattened: every chunk's new tokens end to end, with their positions and the slots
their K/V go to. Logits are computed only at the last token of the chunks that sample. The step
ends with one device-to-host copy: the sampled ids (and, when asked for, their logprobs) packed
into one tensor. `_forward` is the seam where a CUDA-graph replay of decode batches goes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


@dataclass(frozen=True)
class ModelInputs:
    input_ids: torch.Tensor         # int64 [T]
    positions: torch.Tensor         # int64 [T]
    meta: AttentionMetadata
    sample_indices: torch.Tensor    # int64 [S]: rows of the hidden states that sample


class ModelRunner:
    def __init__(self, model: torch.nn.Module, kv: KVCacheManager, sampler: Sampler,
                 device: torch.device) -> None:
        self.model = model
        self.kv = kv
        self.sampler = sampler
        self.device = device

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepResult:
        inputs = self.prepare(batch)
        hidden = self._forward(inputs)
        rows = [SamplingRow(c.request.params, len(c.request.output_token_ids))
                for c in batch.chunks if c.samples]
        if not rows:
            return StepResult([], [])
        logits = self.model.compute_logits(hidden[inputs.sample_indices])
        return _to_host(self.sampler(logits, rows), rows)

    def _forward(self, inputs: ModelInputs) -> torch.Tensor:
        return self.model(inputs.input_ids, inputs.positions, self.kv.kv_cache, inputs.meta)

    def prepare(self, batch: ScheduledBatch) -> ModelInputs:
        """Host-side lists -> a few tensors, copied to the device without waiting for it."""
        block_size = self.kv.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        for chunk in batch.chunks:
            end = chunk.start + chunk.num_tokens
            input_ids += chunk.request.token_ids(chunk.start, end)
            positions += range(chunk.start, end)
            query_start_loc.append(query_start_loc[-1] + chunk.num_tokens)
            seq_lens.append(end)
        width = max(cdiv(n, block_size) for n in seq_lens)
        block_tables = [list(c.block_ids[:width]) + [0] * (width - len(c.block_ids[:width]))
                        for c in batch.chunks]
        sample_indices = [query_start_loc[i + 1] - 1 for i, c in enumerate(batch.chunks) if c.samples]

        positions_t = torch.tensor(positions, dtype=torch.int64)
        tables_t = torch.tensor(block_tables, dtype=torch.int32)
        num_new = torch.tensor([c.num_tokens for c in batch.chunks])
        # slot = block_id * block_size + offset, for the whole batch in a few host-side ops.
        seq_index = torch.repeat_interleave(torch.arange(len(seq_lens)), num_new)
        slots = (tables_t[seq_index, positions_t // block_size].long() * block_size
                 + positions_t % block_size)
        dev = self._to_device
        meta = AttentionMetadata(query_start_loc=dev(torch.tensor(query_start_loc, dtype=torch.int32)),
                                 seq_lens=dev(torch.tensor(seq_lens, dtype=torch.int32)),
                                 block_tables=dev(tables_t), slot_mapping=dev(slots),
                                 max_query_len=max(c.num_tokens for c in batch.chunks),
                                 max_seq_len=max(seq_lens))
        return ModelInputs(dev(torch.tensor(input_ids, dtype=torch.int64)), dev(positions_t), meta,
                           dev(torch.tensor(sample_indices, dtype=torch.int64)))

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        return to_device(host, self.device)


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
