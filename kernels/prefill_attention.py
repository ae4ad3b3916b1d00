"""Prefill attention: variable-length causal attention over a flattened batch, reading every
key/value (the cached prefix and the new chunk) from the paged KV pool.

Layout (see docs/kv-layout.md): key_cache / value_cache are [num_blocks, block_size, num_kv_heads,
head_dim] views whose block stride may be larger than a block (the pool is page-major).

The kernel is flash-attention over pages: a program owns BLOCK_M new tokens of one sequence and one
query head, and streams the context's keys/values BLOCK_N tokens at a time through the block
table. The grid is sized from the token count alone (each sequence's tiles are found by a binary
search over query_start_loc), so a launch needs no device-to-host sync."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.arguments import (KernelArgumentError, check_dim, check_paged_kv, check_same_device,
                               check_tensor, next_power_of_2, output_like,
                               use_triton_for)


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


@dataclass(frozen=True)
class PrefillLaunch:
    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise KernelArgumentError(f"launch.{name}", f"must be a power of two >= 16, got {size}")


# Best launch per head dim, from the sweep of benchmarks/kernels.py on an H200 (bf16, causal 8 x 2k).
PREFILL_LAUNCHES: dict[int, PrefillLaunch] = {
    64: PrefillLaunch(block_m=128, block_n=64, num_warps=4, num_stages=3),
    128: PrefillLaunch(block_m=128, block_n=128, num_warps=8, num_stages=3),
}


@triton.jit
def _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_M: tl.constexpr):
    """The sequence whose query tiles hold `tile`: sequence i's tiles start at
    query_start_loc[i] // BLOCK_M + i (a strictly increasing sequence)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_M + mid
        if first_tile <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attend_tile(q, m, l, acc, n0, pos, k_base, v_base, table, seq_len, scale_log2,
                 stride_kb, stride_kt, stride_vb, stride_vt, d, d_mask,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr):
    cols = n0 + tl.arange(0, BLOCK_N)
    in_seq = cols < seq_len
    pages = tl.load(table + cols // BLOCK_SIZE, mask=in_seq, other=0).to(tl.int64)
    offs = cols % BLOCK_SIZE
    kv_mask = in_seq[:, None] & d_mask[None, :]
    k = tl.load(k_base + pages[:, None] * stride_kb + offs[:, None] * stride_kt + d[None, :],
                mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k)) * scale_log2
    if CAUSAL_MASK:
        s = tl.where(cols[None, :] <= pos[:, None], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    v = tl.load(v_base + pages[:, None] * stride_vb + offs[:, None] * stride_vt + d[None, :],
                mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l, acc


# Arguments that vary with the batch are not specialized on, so no batch shape compiles anew.
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, query_start_loc_ptr,
                    seq_lens_ptr, out_ptr, scale_log2, num_seqs,
                    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                    stride_vb, stride_vt, stride_vh, stride_bt, stride_ot, stride_oh,
                    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                    HEAD_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_M)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_end = tl.load(query_start_loc_ptr + seq + 1)
    m0 = q_start + (tile - (q_start // BLOCK_M + seq)) * BLOCK_M
    if m0 >= q_end:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_start = seq_len - (q_end - q_start)     # position of the first new token

    rows = m0 + tl.arange(0, BLOCK_M)
    row_mask = rows < q_end
    pos = context_start + (rows - q_start)
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + rows[:, None].to(tl.int64) * stride_qt + head * stride_qh + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    kv_head = head // GROUP
    k_base = k_cache_ptr + kv_head * stride_kh
    v_base = v_cache_ptr + kv_head * stride_vh
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
    first_pos = context_start + (m0 - q_start)
    last_pos = context_start + (tl.minimum(m0 + BLOCK_M, q_end) - q_start) - 1
    # Keys up to first_pos are visible to every row: those tiles need no causal mask.
    full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
    for n0 in range(0, full_end, BLOCK_N):
        m, l, acc = _attend_tile(q, m, l, acc, n0, pos, k_base, v_base, table, seq_len,
                                 scale_log2, stride_kb, stride_kt, stride_vb, stride_vt, d,
                                 d_mask, BLOCK_SIZE, BLOCK_N, False)
    for n0 in range(full_end, last_pos + 1, BLOCK_N):
        m, l, acc = _attend_tile(q, m, l, acc, n0, pos, k_base, v_base, table, seq_len,
                                 scale_log2, stride_kb, stride_kt, stride_vb, stride_vt, d,
                                 d_mask, BLOCK_SIZE, BLOCK_N, True)
    out = acc / l[:, None]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_ot + head * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])


def _check(q, key_cache, value_cache, block_tables, query_start_loc, seq_lens) -> None:
    check_paged_kv(q, key_cache, value_cache)
    check_tensor("seq_lens", seq_lens, 1, (torch.int32,))
    check_tensor("query_start_loc", query_start_loc, 1, (torch.int32,))
    check_dim("query_start_loc", query_start_loc, 0, seq_lens.shape[0] + 1)
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    check_dim("block_tables", block_tables, 0, seq_lens.shape[0])
    check_same_device(q=q, key_cache=key_cache, value_cache=value_cache,
                      block_tables=block_tables, query_start_loc=query_start_loc,
                      seq_lens=seq_lens)


def prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                      seq_lens: torch.Tensor, scale: float, *, use_triton: bool | None = None,
                      launch: PrefillLaunch | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Shapes as in prefill_attention_ref; query_start_loc must end at q.shape[0] and each
    sequence's new tokens must fit in its context (q_len <= seq_len). Returns [num_tokens,
    num_heads, head_dim] in q's dtype: `out` if given, else a new tensor."""
    _check(q, key_cache, value_cache, block_tables, query_start_loc, seq_lens)
    if not use_triton_for(use_triton, q):
        result = prefill_attention_ref(q, key_cache, value_cache, block_tables, query_start_loc,
                                       seq_lens, scale)
        return result if out is None else output_like(out, q).copy_(result)
    out = output_like(out, q)
    num_tokens, num_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    launch = launch or PREFILL_LAUNCHES.get(head_dim, PrefillLaunch())
    # Every sequence's tiles fit in num_tokens // BLOCK_M + num_seqs slots; extra ones exit.
    num_tiles = num_tokens // launch.block_m + num_seqs
    _prefill_kernel[(num_tiles, num_heads)](
        q, key_cache, value_cache, block_tables, query_start_loc, seq_lens, out,
        scale * math.log2(math.e), num_seqs,
        q.stride(0), q.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        BLOCK_SIZE=key_cache.shape[1], GROUP=num_heads // key_cache.shape[2], HEAD_DIM=head_dim,
        HEAD_PAD=max(16, next_power_of_2(head_dim)), BLOCK_M=launch.block_m,
        BLOCK_N=launch.block_n, num_warps=launch.num_warps, num_stages=launch.num_stages)
    return out
