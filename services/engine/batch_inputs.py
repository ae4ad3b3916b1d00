"""A scheduled batch flattened into the host arrays one forward pass reads.

Chunks of one new token (decodes) come first, then multi-token chunks (prefills), so attention
can give each group its own kernel (model/attention.py); `order` maps the flattened position of a
chunk back to its place in the scheduled batch. Built with numpy: at 256 sequences a Python list
per token would cost the host milliseconds a step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from services.engine.kv_cache import cdiv
from services.engine.scheduler import ScheduledChunk

# Block tables are padded to a multiple of this many blocks, so the attention kernels see a few
# table strides (each stride class is a separate compilation) rather than one per width.
TABLE_WIDTH_ALIGN = 16


@dataclass(frozen=True)
class BatchInputs:
    order: tuple[int, ...]          # flattened chunk k is batch.chunks[order[k]]
    num_decodes: int                # the first num_decodes chunks have one new token each
    input_ids: torch.Tensor         # int64 [T]
    positions: torch.Tensor         # int64 [T]
    slot_mapping: torch.Tensor      # int64 [T]
    seq_lens: torch.Tensor          # int32 [S]
    block_tables: torch.Tensor      # int32 [S, width], width a multiple of TABLE_WIDTH_ALIGN
    query_start_loc: torch.Tensor   # int32 [S + 1]
    sample_indices: torch.Tensor    # int64 [samples]: rows of the hidden states that sample
    max_query_len: int

    @property
    def num_seqs(self) -> int:
        return len(self.order)

    @property
    def is_decode_only(self) -> bool:
        return self.num_decodes == self.num_seqs

    @property
    def samples_every_row(self) -> bool:
        return self.sample_indices.shape[0] == self.input_ids.shape[0]


def build_batch_inputs(chunks: tuple[ScheduledChunk, ...], block_size: int) -> BatchInputs:
    order = ([i for i, c in enumerate(chunks) if c.num_tokens == 1]
             + [i for i, c in enumerate(chunks) if c.num_tokens != 1])
    num_decodes = sum(1 for c in chunks if c.num_tokens == 1)
    ordered = [chunks[i] for i in order]
    num_new = np.fromiter((c.num_tokens for c in ordered), np.int64, len(ordered))
    starts = np.fromiter((c.start for c in ordered), np.int64, len(ordered))
    seq_lens = starts + num_new
    query_start_loc = np.zeros(len(ordered) + 1, np.int64)
    np.cumsum(num_new, out=query_start_loc[1:])

    blocks_needed = [cdiv(int(n), block_size) for n in seq_lens]
    width = cdiv(max(blocks_needed), TABLE_WIDTH_ALIGN) * TABLE_WIDTH_ALIGN
    tables = np.zeros((len(ordered), width), np.int32)
    for row, (chunk, needed) in enumerate(zip(ordered, blocks_needed)):
        tables[row, :needed] = chunk.block_ids[:needed]

    input_ids: list[int] = []
    for chunk in ordered:
        input_ids += chunk.request.token_ids(chunk.start, chunk.start + chunk.num_tokens)
    total = int(query_start_loc[-1])
    seq_index = np.repeat(np.arange(len(ordered)), num_new)
    positions = np.arange(total, dtype=np.int64) - query_start_loc[seq_index] + starts[seq_index]
    slots = tables[seq_index, positions // block_size].astype(np.int64) * block_size + positions % block_size
    samples = [int(query_start_loc[k + 1]) - 1 for k, c in enumerate(ordered) if c.samples]
    return BatchInputs(
        order=tuple(order), num_decodes=num_decodes,
        input_ids=torch.tensor(input_ids, dtype=torch.int64),
        positions=torch.from_numpy(positions), slot_mapping=torch.from_numpy(slots),
        seq_lens=torch.from_numpy(seq_lens.astype(np.int32)), block_tables=torch.from_numpy(tables),
        query_start_loc=torch.from_numpy(query_start_loc.astype(np.int32)),
        sample_indices=torch.tensor(samples, dtype=torch.int64),
        max_query_len=int(num_new.max()))
