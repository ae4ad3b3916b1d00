"""The one narrow attention function every model layer calls, and the batch metadata it reads.

A step's batch is flattened: the new tokens of every scheduled sequence laid end to end (a prefill
chunk contributes many, a decoding sequence one). One kernel rotates q and k and writes the new
tokens' K/V into their pages first; attention then reads the whole context from the pages, so a
cached prefix, an earlier chunk and the new tokens are all read the same way.

Sequences with one new token come first in the batch (`num_decodes` of them): they go through the
decode kernel, which reads each context once for all the query heads that share a KV head; the
multi-token chunks after them go through the prefill kernel. A mixed batch is therefore two
launches per layer, each with the kernel made for its rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels


@dataclass(frozen=True)
class AttentionMetadata:
    query_start_loc: torch.Tensor   # int32 [num_seqs + 1]: where each sequence's new tokens start
    seq_lens: torch.Tensor          # int32 [num_seqs]: context length after this step (cached + new)
    block_tables: torch.Tensor      # int32 [num_seqs, max_blocks_per_seq], padded with 0
    slot_mapping: torch.Tensor      # int64 [num_tokens]: block_id * block_size + offset per new token
    max_query_len: int              # 1 means a decode-only batch
    max_seq_len: int
    num_decodes: int = 0            # the first num_decodes sequences have one new token each
    # int32 [num_seqs - num_decodes + 1]: query_start_loc of the multi-token chunks, from 0
    prefill_query_start_loc: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor, kv_layer: torch.Tensor, meta: AttentionMetadata,
                    scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim], before
    rotary (q is rotated in place); positions [num_tokens] and cos_sin as rotary takes them;
    kv_layer: this layer's slice of the pool, [num_blocks, 2, block_size, num_kv_heads, head_dim].
    Returns [num_tokens, num_heads, head_dim]: `out` if given (written in place), else new."""
    key_cache, value_cache = kv_layer[:, 0], kv_layer[:, 1]
    kernels.rotary_kv_write(q, k, v, positions, cos_sin, key_cache, value_cache,
                            meta.slot_mapping)
    if meta.max_query_len == 1:
        return kernels.paged_decode_attention(q, key_cache, value_cache, meta.block_tables,
                                              meta.seq_lens, scale, out=out)
    d = meta.num_decodes
    if d == 0:
        return kernels.prefill_attention(q, key_cache, value_cache, meta.block_tables,
                                         meta.query_start_loc, meta.seq_lens, scale, out=out)
    out = torch.empty_like(q) if out is None else out
    kernels.paged_decode_attention(q[:d], key_cache, value_cache, meta.block_tables[:d],
                                   meta.seq_lens[:d], scale, out=out[:d])
    kernels.prefill_attention(q[d:], key_cache, value_cache, meta.block_tables[d:],
                              meta.prefill_query_start_loc, meta.seq_lens[d:], scale, out=out[d:])
    return out
