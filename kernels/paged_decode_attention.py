"""Paged decode attention: one query token per sequence, K/V read through block tables."""

from __future__ import annotations

import torch

from kernels.prefill_attention import prefill_attention_ref


def paged_decode_attention_ref(q: torch.Tensor, key_cache: torch.Tensor,
                               value_cache: torch.Tensor, block_tables: torch.Tensor,
                               seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """The specification. q: [num_seqs, num_heads, head_dim], the token at position
    seq_lens[i] - 1 of sequence i, which attends to positions 0 .. seq_lens[i] - 1."""
    query_start_loc = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return prefill_attention_ref(q, key_cache, value_cache, block_tables, query_start_loc,
                                 seq_lens, scale)


def paged_decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    return paged_decode_attention_ref(q, key_cache, value_cache, block_tables, seq_lens, scale)
