"""Rotary position embedding (rotate-half / NeoX form used by Llama, Mistral and Qwen2).
One program rotates every head of one token's q and k, reading its cos/sin row once."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import (FLOAT_DTYPES, KernelArgumentError, check_dim, check_same_device,
                               check_tensor, next_power_of_2, use_triton_for)


def rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification. q: [num_tokens, num_heads, head_dim]; k: [num_tokens, num_kv_heads,
    head_dim]; cos_sin_cache: fp32 [max_position, head_dim], cos in the first half of the last
    dim and sin in the second (one entry per rotated pair). Returns new tensors."""
    half = q.shape[-1] // 2
    cos, sin = cos_sin_cache[positions.long()].split(half, dim=-1)   # [T, half] each
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().split(half, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


@triton.jit
def rotate_heads(src_ptr, dst_ptr, num_heads, stride_st, stride_sh, stride_dt, stride_dh,
                 token, cos, sin, HEADS_PAD: tl.constexpr, HALF: tl.constexpr,
                 HALF_PAD: tl.constexpr):
    """Rotate num_heads heads of one token from src into dst (which may be src)."""
    h = tl.arange(0, HEADS_PAD)
    j = tl.arange(0, HALF_PAD)
    mask = (h < num_heads)[:, None] & (j < HALF)[None, :]
    src = src_ptr + token * stride_st + h[:, None] * stride_sh + j[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + token * stride_dt + h[:, None] * stride_dh + j[None, :]
    ty = dst_ptr.dtype.element_ty
    tl.store(dst, (x1 * cos[None, :] - x2 * sin[None, :]).to(ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cache_ptr,
                   num_heads, num_kv_heads, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_qot, stride_qoh, stride_kot, stride_koh, stride_cache,
                   Q_HEADS_PAD: tl.constexpr, K_HEADS_PAD: tl.constexpr, HALF: tl.constexpr,
                   HALF_PAD: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    j = tl.arange(0, HALF_PAD)
    cos = tl.load(cache_ptr + pos * stride_cache + j, mask=j < HALF, other=0.0)
    sin = tl.load(cache_ptr + pos * stride_cache + HALF + j, mask=j < HALF, other=0.0)
    rotate_heads(q_ptr, q_out_ptr, num_heads, stride_qt, stride_qh, stride_qot, stride_qoh,
                 token, cos, sin, Q_HEADS_PAD, HALF, HALF_PAD)
    rotate_heads(k_ptr, k_out_ptr, num_kv_heads, stride_kt, stride_kh, stride_kot, stride_koh,
                 token, cos, sin, K_HEADS_PAD, HALF, HALF_PAD)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           cos_sin_cache: torch.Tensor, *, use_triton: bool | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as in rotary_ref; q and k may be strided views (head_dim contiguous), e.g. slices
    of a fused qkv projection. Positions must lie below cos_sin_cache.shape[0]."""
    check_tensor("q", q, 3, FLOAT_DTYPES)
    check_tensor("k", k, 3, (q.dtype,))
    check_dim("k", k, 0, q.shape[0])
    check_dim("k", k, 2, q.shape[2])
    if q.shape[2] % 2:
        raise KernelArgumentError("q", f"head_dim must be even, got {q.shape[2]}")
    check_tensor("positions", positions, 1, (torch.int32, torch.int64))
    check_dim("positions", positions, 0, q.shape[0])
    check_tensor("cos_sin_cache", cos_sin_cache, 2, (torch.float32,))
    check_dim("cos_sin_cache", cos_sin_cache, 1, q.shape[2])
    check_same_device(q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)
    if not use_triton_for(use_triton, q):
        return rotary_ref(q, k, positions, cos_sin_cache)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    q_out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    k_out = torch.empty((num_tokens, num_kv_heads, head_dim), dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        q, k, q_out, k_out, positions, cos_sin_cache, num_heads, num_kv_heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), q_out.stride(0), q_out.stride(1),
        k_out.stride(0), k_out.stride(1), cos_sin_cache.stride(0),
        Q_HEADS_PAD=next_power_of_2(num_heads), K_HEADS_PAD=next_power_of_2(num_kv_heads),
        HALF=half, HALF_PAD=next_power_of_2(half), num_warps=4)
    return q_out, k_out
