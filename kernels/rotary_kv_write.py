"""Rotary embedding and the KV page write in one launch: what every layer does between its qkv
projection and its attention. q is rotated in place; k is rotated on its way into its page and
v copied beside it, so the rotated k is never written anywhere but the pool (the attention
kernels read K/V only from the pages).

One program per token and KV head: the token's cos/sin row, the query heads that share the KV
head, then its K and V into their slot (a negative slot is skipped: the padded rows of a graph
bucket). A decode of one token thus runs on as many SMs as there are KV heads. rotary.py and
kv_page_write.py are the two halves as separate kernels."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import (FLOAT_DTYPES, KernelArgumentError, check_dim, check_kv_pages,
                               check_same_device, check_tensor, next_power_of_2, use_triton_for)
from kernels.kv_page_write import write_kv_pages_ref
from kernels.rotary import rotary_ref, rotate_heads


def rotary_kv_write_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                        key_cache: torch.Tensor, value_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> None:
    """The specification: q <- rotary(q) in place; rotary(k) and v written to their slots."""
    q_rot, k_rot = rotary_ref(q, k, positions, cos_sin_cache)
    q.copy_(q_rot)
    write_kv_pages_ref(k_rot, v, key_cache, value_cache, slot_mapping)


@triton.jit
def _rotary_kv_write_kernel(
        q_ptr, k_ptr, v_ptr, positions_ptr, cos_sin_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
        stride_cos, stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HALF: tl.constexpr,
        HALF_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    j = tl.arange(0, HALF_PAD)
    cos = tl.load(cos_sin_ptr + pos * stride_cos + j, mask=j < HALF, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cos + HALF + j, mask=j < HALF, other=0.0)
    # The query heads that share this KV head, in place.
    q_heads = q_ptr + kv_head * GROUP * stride_qh
    rotate_heads(q_heads, q_heads, GROUP, stride_qt, stride_qh, stride_qt, stride_qh,
                 token, cos, sin, GROUP_PAD, HALF, HALF_PAD)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot >= 0:
        block = slot // BLOCK_SIZE
        offset = slot % BLOCK_SIZE
        # The page row is the destination "token" 0 of the rotation.
        rotate_heads(k_ptr + kv_head * stride_kh,
                     k_cache_ptr + block * stride_kcb + offset * stride_kct + kv_head * stride_kch,
                     1, stride_kt, 0, 0, 0, token, cos, sin, 1, HALF, HALF_PAD)
        d = tl.arange(0, 2 * HALF_PAD)
        mask = d < 2 * HALF
        value = tl.load(v_ptr + token * stride_vt + kv_head * stride_vh + d, mask=mask, other=0.0)
        v_dst = v_cache_ptr + block * stride_vcb + offset * stride_vct + kv_head * stride_vch + d
        tl.store(v_dst, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _check(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping) -> None:
    check_tensor("q", q, 3, FLOAT_DTYPES)
    check_tensor("k", k, 3, (q.dtype,))
    check_tensor("v", v, 3, (q.dtype,))
    num_tokens, _, head_dim = q.shape
    if head_dim % 2:
        raise KernelArgumentError("q", f"head_dim must be even, got {head_dim}")
    for name, t in (("k", k), ("v", v)):
        check_dim(name, t, 0, num_tokens)
        check_dim(name, t, 2, head_dim)
    if v.shape != k.shape:
        raise KernelArgumentError("v", f"shape {tuple(v.shape)} differs from k {tuple(k.shape)}")
    if q.shape[1] % k.shape[1]:
        raise KernelArgumentError("k", f"{k.shape[1]} KV heads do not divide {q.shape[1]} "
                                       "query heads")
    check_tensor("positions", positions, 1, (torch.int32, torch.int64))
    check_dim("positions", positions, 0, num_tokens)
    check_tensor("cos_sin_cache", cos_sin_cache, 2, (torch.float32,))
    check_dim("cos_sin_cache", cos_sin_cache, 1, head_dim)
    check_kv_pages(key_cache, value_cache, FLOAT_DTYPES, head_dim, k.shape[1])
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32))
    check_dim("slot_mapping", slot_mapping, 0, num_tokens)
    check_same_device(q=q, k=k, v=v, positions=positions, cos_sin_cache=cos_sin_cache,
                      key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)


def rotary_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin_cache: torch.Tensor, key_cache: torch.Tensor,
                    value_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                    use_triton: bool | None = None) -> torch.Tensor:
    """q: [T, heads, head_dim], k, v: [T, kv_heads, head_dim] (strided views with head_dim
    contiguous, e.g. slices of a fused qkv projection); positions [T] below
    cos_sin_cache.shape[0] (layout of rotary.py); key_cache / value_cache [num_blocks,
    block_size, kv_heads, head_dim] in a float dtype, slot_mapping [T] as in kv_page_write.py.
    Rotates q in place and returns it; the pages receive rotary(k) and v."""
    _check(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping)
    if not use_triton_for(use_triton, q):
        rotary_kv_write_ref(q, k, v, positions, cos_sin_cache, key_cache, value_cache,
                            slot_mapping)
        return q
    num_tokens, num_heads, head_dim = q.shape
    if num_tokens == 0:
        return q
    num_kv_heads = k.shape[1]
    group, half = num_heads // num_kv_heads, head_dim // 2
    _rotary_kv_write_kernel[(num_tokens, num_kv_heads)](
        q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_sin_cache.stride(0), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        GROUP=group, GROUP_PAD=next_power_of_2(group), HALF=half, HALF_PAD=next_power_of_2(half),
        BLOCK_SIZE=key_cache.shape[1], num_warps=1)
    return q
