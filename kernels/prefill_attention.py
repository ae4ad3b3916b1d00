"""Prefill attention: variable-length causal attention over a flattened batch, reading every
key/value (the cached prefix and the new chunk) from the paged KV pool.

Layout (see docs/kv-layout.md): key_cache / value_cache are [num_blocks, block_size, num_kv_heads,
head_dim] views whose block stride may be larger than a block (the pool is page-major)."""

from __future__ import annotations

import torch


def prefill_attention_ref(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                          block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                          seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """The specification. q: [num_tokens, num_heads, head_dim]; query_start_loc: int32
    [num_seqs + 1]; seq_lens: int32 [num_seqs], context length after this step (cached + new);
    block_tables: int32 [num_seqs, max_blocks]. The new tokens of sequence i sit at the last
    positions of its context, and each attends causally to every position up to its own."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = key_cache.shape[2], key_cache.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        qs, qe = starts[i], starts[i + 1]
        if qe == qs:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = block_tables[i, :num_blocks].long()
        k = key_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        v = value_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].float()
        k = k.repeat_interleave(group, dim=1)              # [seq_len, num_heads, head_dim]
        v = v.repeat_interleave(group, dim=1)
        qi = q[qs:qe].float()                              # [q_len, num_heads, head_dim]
        scores = torch.einsum("qhd,khd->hqk", qi, k) * scale
        q_pos = torch.arange(seq_len - (qe - qs), seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        scores.masked_fill_(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[qs:qe] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out


def prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                      seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    return prefill_attention_ref(q, key_cache, value_cache, block_tables, query_start_loc,
                                 seq_lens, scale)
