"""A small harness that runs a model over the paged KV pool the way the engine does: sequences
own non-contiguous blocks, each step is one flattened batch of prefill chunks and decode tokens
with its AttentionMetadata built here, independently of the engine's runner."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from services.engine.config import ModelConfig
from services.engine.model.attention import AttentionMetadata


@dataclass
class PagedSequence:
    token_ids: list[int]
    num_computed: int = 0                        # tokens whose K/V are in the pages
    block_ids: list[int] = field(default_factory=list)


class PagedHarness:
    def __init__(self, model: torch.nn.Module, config: ModelConfig, block_size: int = 4,
                 num_blocks: int = 64, seed: int = 0) -> None:
        self.model, self.block_size = model, block_size
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        self.kv_cache = torch.zeros(num_blocks, config.num_layers, 2, block_size,
                                    config.num_kv_heads, config.head_dim, dtype=dtype, device=device)
        # Shuffled so that a sequence's pages are never contiguous; block 0 stays unused, since
        # block tables are padded with it.
        self.free_blocks = list(range(1, num_blocks))
        random.Random(seed).shuffle(self.free_blocks)

    def step(self, work: list[tuple[PagedSequence, int]]) -> torch.Tensor:
        """Run `num_new` more tokens of each sequence in one forward; returns fp32 logits of
        every new token, [sum(num_new), vocab], in batch order."""
        for seq, num_new in work:
            needed = -(-(seq.num_computed + num_new) // self.block_size)
            while len(seq.block_ids) < needed:
                seq.block_ids.append(self.free_blocks.pop())
        input_ids, positions, meta = build_batch(work, self.block_size, self.kv_cache.device)
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, self.kv_cache, meta)
            logits = self.model.compute_logits(hidden)
        for seq, num_new in work:
            seq.num_computed += num_new
        return logits


def build_batch(work: list[tuple[PagedSequence, int]], block_size: int,
                device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    input_ids, positions, slots, starts, seq_lens = [], [], [], [0], []
    for seq, num_new in work:
        new_positions = range(seq.num_computed, seq.num_computed + num_new)
        input_ids += seq.token_ids[seq.num_computed:seq.num_computed + num_new]
        positions += new_positions
        slots += [seq.block_ids[p // block_size] * block_size + p % block_size
                  for p in new_positions]
        starts.append(starts[-1] + num_new)
        seq_lens.append(seq.num_computed + num_new)
    max_blocks = max(len(seq.block_ids) for seq, _ in work)
    tables = [seq.block_ids + [0] * (max_blocks - len(seq.block_ids)) for seq, _ in work]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(num_new for _, num_new in work),
        max_seq_len=max(seq_lens))
    return (torch.tensor(input_ids, dtype=torch.int64, device=device),
            torch.tensor(positions, dtype=torch.int64, device=device), meta)
