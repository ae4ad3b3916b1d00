"""Paged decode attention: one query token per sequence, K/V read through block tables.

Decode is bandwidth-bound, so the kernel reads every K/V byte once: a program owns one KV head of
one sequence and computes all the query heads that share it (GQA), and long contexts are split
into partitions handled by separate programs (flash-decoding), merged afterwards by an exact
log-sum-exp reduction. The launch fixes how many programs may share one sequence (from the
batch size, so that the grid fills the GPU: many for batch 1, one for a large batch); each
sequence's programs then split its actual length among themselves in whole tiles, read on the
device, so a short context in a table sized for long ones still uses all of them, and the launch
needs no device-to-host sync and can be captured in a CUDA graph. A sequence that needs only one
partition is written whole by its one program and skipped by the reduction: its partial never
makes a round trip through memory; a launch with one partition per sequence has no reduction."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from kernels.arguments import (KernelArgumentError, check_dim, check_paged_kv, check_same_device,
                               check_tensor, next_power_of_2, output_like,
                               use_triton_for)
from kernels.prefill_attention import prefill_attention_ref


def paged_decode_attention_ref(q: torch.Tensor, key_cache: torch.Tensor,
                               value_cache: torch.Tensor, block_tables: torch.Tensor,
                               seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """The specification. q: [num_seqs, num_heads, head_dim], the token at position
    seq_lens[i] - 1 of sequence i, which attends to positions 0 .. seq_lens[i] - 1."""
    query_start_loc = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return prefill_attention_ref(q, key_cache, value_cache, block_tables, query_start_loc,
                                 seq_lens, scale)


@dataclass(frozen=True)
class DecodeLaunch:
    """One launch: `block_n` tokens per tile; up to `partitions` programs share one sequence,
    each taking an equal run of whole tiles of its context, no fewer than `min_tiles`."""

    block_n: int = 64
    partitions: int = 1
    min_tiles: int = 2
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise KernelArgumentError("launch.block_n",
                                      f"must be a power of two >= 16, got {self.block_n}")
        for name in ("partitions", "min_tiles"):
            if getattr(self, name) < 1:
                raise KernelArgumentError(f"launch.{name}",
                                          f"must be >= 1, got {getattr(self, name)}")


# Best tiles per head dim, from the sweep of benchmarks/kernels.py on an H200 (bf16, GQA 32/8);
# `default_launch` sets the partitions.
DECODE_LAUNCHES: dict[int, DecodeLaunch] = {
    64: DecodeLaunch(block_n=64, min_tiles=1, num_warps=4, num_stages=3),
    128: DecodeLaunch(block_n=64, min_tiles=1, num_warps=4, num_stages=3),
}
_PARTITIONS_PER_REDUCE_STEP = 16
_PROGRAMS_PER_SM = 3


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def default_launch(num_seqs: int, num_kv_heads: int, max_context: int, head_dim: int,
                   device: torch.device) -> DecodeLaunch:
    """The table's tiles, with as many partitions per sequence as give every SM a few programs,
    and no more than a context of max_context tokens (the block table's width) can use. A batch
    that fills the GPU by itself gets one: a split costs its partials' round trip and a
    reduction launch, more than uneven waves do (H200: batch 64 at 576 tokens 41 us unsplit,
    54-63 us in 2-32 partitions)."""
    launch = DECODE_LAUNCHES.get(head_dim, DecodeLaunch())
    wanted = _PROGRAMS_PER_SM * _sm_count(device) // max(1, num_seqs * num_kv_heads)
    usable = triton.cdiv(max_context, launch.min_tiles * launch.block_n)
    return replace(launch, partitions=max(1, min(wanted, usable)))


def decode_launch_variants(head_dim: int) -> tuple[DecodeLaunch, ...]:
    """One launch of each compiled variant `default_launch` can return for this head dim (one
    partition per sequence, and several: the count itself is not compiled in), for warm-up."""
    launch = DECODE_LAUNCHES.get(head_dim, DecodeLaunch())
    return launch, replace(launch, partitions=2)


@triton.jit
def _partition_tokens(seq_len, num_partitions, BLOCK_N: tl.constexpr, MIN_TILES: tl.constexpr):
    """Tokens per program: the sequence split among its programs in whole tiles."""
    tiles = tl.cdiv(tl.cdiv(seq_len, num_partitions), BLOCK_N)
    return tl.maximum(tiles, MIN_TILES) * BLOCK_N


# Arguments that vary with the batch are not specialized on, so no batch shape compiles anew.
@triton.jit(do_not_specialize=["num_partitions", "stride_bt"])
def _decode_partition_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
        part_out_ptr, part_lse_ptr, scale_log2, num_heads, num_partitions,
        stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
        stride_bt, stride_os, stride_oh,
        BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
        MIN_TILES: tl.constexpr, SPLIT: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    partition = _partition_tokens(seq_len, num_partitions, BLOCK_N, MIN_TILES)
    start = part * partition
    if start >= seq_len:
        return
    end = tl.minimum(seq_len, start + partition)

    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_mask = rows < GROUP
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_base = k_cache_ptr + kv_head * stride_kh
    v_base = v_cache_ptr + kv_head * stride_vh

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    for tok0 in range(start, end, BLOCK_N):
        toks = tok0 + tl.arange(0, BLOCK_N)
        valid = toks < end
        pages = tl.load(table + toks // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        offs = toks % BLOCK_SIZE
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_base + pages[:, None] * stride_kb + offs[:, None] * stride_kt + d[None, :],
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        v = tl.load(v_base + pages[:, None] * stride_vb + offs[:, None] * stride_vt + d[None, :],
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new

    out = acc / l[:, None]
    out_ptrs = out_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :]
    out_mask = row_mask[:, None] & d_mask[None, :]
    if SPLIT:
        if seq_len <= partition:
            # The sequence's only partition: its result is final, the reduction skips it.
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
        else:
            # Partials in fp32, normalised, with their log2-sum-exp for the exact merge.
            part_row = (seq * num_heads + heads) * num_partitions + part
            tl.store(part_out_ptr + part_row[:, None] * HEAD_DIM + d[None, :], out,
                     mask=out_mask)
            tl.store(part_lse_ptr + part_row, m + tl.log2(l), mask=row_mask)
    else:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["num_partitions"])
def _decode_reduce_kernel(part_out_ptr, part_lse_ptr, seq_lens_ptr, out_ptr, num_heads,
                          num_partitions, stride_os, stride_oh,
                          HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                          MIN_TILES: tl.constexpr, CHUNK: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    used = tl.cdiv(seq_len, _partition_tokens(seq_len, num_partitions, BLOCK_N, MIN_TILES))
    if used <= 1:               # written whole by its one partition program
        return
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_DIM
    row0 = (seq * num_heads + head) * num_partitions
    # One running (max, sum, acc) per lane; lanes are merged at the end.
    m = tl.full([CHUNK], float("-inf"), tl.float32)
    s = tl.zeros([CHUNK], tl.float32)
    acc = tl.zeros([CHUNK, HEAD_PAD], tl.float32)
    for p0 in range(0, used, CHUNK):
        parts = p0 + tl.arange(0, CHUNK)
        p_mask = parts < used
        lse = tl.load(part_lse_ptr + row0 + parts, mask=p_mask, other=float("-inf"))
        o = tl.load(part_out_ptr + (row0 + parts)[:, None] * HEAD_DIM + d[None, :],
                    mask=p_mask[:, None] & d_mask[None, :], other=0.0)
        # A lane with no partition yet keeps m = -inf; shifting by 0 then gives weights of 0.
        m_new = tl.maximum(m, lse)
        shift = tl.where(m_new > float("-inf"), m_new, 0.0)
        alpha = tl.exp2(m - shift)
        w = tl.exp2(lse - shift)
        acc = acc * alpha[:, None] + o * w[:, None]
        s = s * alpha + w
        m = m_new
    f = tl.exp2(m - tl.max(m, 0))      # lanes that saw no partition have m = -inf: weight 0
    out = tl.sum(acc * f[:, None], 0) / tl.sum(s * f, 0)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + d, out.to(out_ptr.dtype.element_ty),
             mask=d_mask)


def _check(q, key_cache, value_cache, block_tables, seq_lens) -> None:
    check_paged_kv(q, key_cache, value_cache)
    check_tensor("block_tables", block_tables, 2, (torch.int32,))
    check_dim("block_tables", block_tables, 0, q.shape[0])
    check_tensor("seq_lens", seq_lens, 1, (torch.int32,))
    check_dim("seq_lens", seq_lens, 0, q.shape[0])
    check_same_device(q=q, key_cache=key_cache, value_cache=value_cache,
                      block_tables=block_tables, seq_lens=seq_lens)


def paged_decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor,
                           scale: float, *, use_triton: bool | None = None,
                           launch: DecodeLaunch | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_seqs, num_heads, head_dim]; key_cache/value_cache: [num_blocks, block_size,
    num_kv_heads, head_dim] (any block and token stride, head_dim contiguous); block_tables:
    int32 [num_seqs, max_blocks]; seq_lens: int32 [num_seqs], each >= 1.
    Returns [num_seqs, num_heads, head_dim] in q's dtype: `out` if given, else a new tensor."""
    _check(q, key_cache, value_cache, block_tables, seq_lens)
    if not use_triton_for(use_triton, q):
        result = paged_decode_attention_ref(q, key_cache, value_cache, block_tables, seq_lens,
                                            scale)
        return result if out is None else output_like(out, q).copy_(result)
    out = output_like(out, q)
    num_seqs, num_heads, head_dim = q.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    group = num_heads // num_kv_heads
    if num_seqs == 0:
        return out
    max_context = block_tables.shape[1] * block_size
    launch = launch or default_launch(num_seqs, num_kv_heads, max_context, head_dim, q.device)
    num_partitions = launch.partitions
    split = num_partitions > 1
    if split:
        part_out = torch.empty((num_seqs, num_heads, num_partitions, head_dim),
                               dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_seqs, num_heads, num_partitions), dtype=torch.float32,
                               device=q.device)
    else:
        part_out = part_lse = out      # unused: the kernel writes `out` directly
    head_pad = max(16, next_power_of_2(head_dim))
    _decode_partition_kernel[(num_seqs, num_kv_heads, num_partitions)](
        q, key_cache, value_cache, block_tables, seq_lens, out, part_out, part_lse,
        scale * math.log2(math.e), num_heads, num_partitions,
        q.stride(0), q.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=max(16, next_power_of_2(group)),
        HEAD_DIM=head_dim, HEAD_PAD=head_pad, BLOCK_N=launch.block_n,
        MIN_TILES=launch.min_tiles, SPLIT=split,
        num_warps=launch.num_warps, num_stages=launch.num_stages)
    if split:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            part_out, part_lse, seq_lens, out, num_heads, num_partitions,
            out.stride(0), out.stride(1), HEAD_DIM=head_dim, HEAD_PAD=head_pad,
            BLOCK_N=launch.block_n, MIN_TILES=launch.min_tiles,
            CHUNK=_PARTITIONS_PER_REDUCE_STEP, num_warps=4)
    return out
