"""KV page write: scatter the new tokens' K/V into their slots in the paged pool, optionally
quantizing to INT8 with one scale per (token, KV head), kept in separate scale tensors
(the rule of kernels/quantize_rows.py).

One program writes one token: all its KV heads, K and V, as contiguous rows of head_dim."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import (FLOAT_DTYPES, KernelArgumentError, check_dim, check_kv_pages,
                               check_same_device, check_tensor, next_power_of_2, use_triton_for)
from kernels.quantize_rows import quantize_rows_ref

def write_kv_pages_ref(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                       value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                       key_scale_cache: torch.Tensor | None = None,
                       value_scale_cache: torch.Tensor | None = None) -> None:
    """The specification. key/value: [num_tokens, num_kv_heads, head_dim]; slot_mapping: int64
    [num_tokens], slot = block_id * block_size + offset (a negative slot is skipped). Writes in
    place. With INT8 caches, the scale caches [num_blocks, block_size, num_kv_heads] (fp32)
    receive each token-head's scale."""
    keep = slot_mapping >= 0
    key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    block_size = key_cache.shape[1]
    blocks = torch.div(slot_mapping, block_size, rounding_mode="floor")
    offsets = slot_mapping % block_size
    if key_cache.dtype == torch.int8:
        key_q, key_scale = quantize_rows_ref(key)
        value_q, value_scale = quantize_rows_ref(value)
        key_cache[blocks, offsets] = key_q
        value_cache[blocks, offsets] = value_q
        key_scale_cache[blocks, offsets] = key_scale
        value_scale_cache[blocks, offsets] = value_scale
        return
    key_cache[blocks, offsets] = key.to(key_cache.dtype)
    value_cache[blocks, offsets] = value.to(value_cache.dtype)


@triton.jit
def _kv_write_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
                     slot_ptr, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
                     stride_ksb, stride_kst, stride_vsb, stride_vst,
                     NUM_KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
                     HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, QUANTIZE: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, HEAD_PAD)
    h_mask = h < NUM_KV_HEADS
    mask = h_mask[:, None] & (d < HEAD_DIM)[None, :]
    k = tl.load(key_ptr + token * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask,
                other=0.0)
    v = tl.load(value_ptr + token * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask,
                other=0.0)
    k_dst = k_cache_ptr + block * stride_kcb + offset * stride_kct + h[:, None] * stride_kch + d[None, :]
    v_dst = v_cache_ptr + block * stride_vcb + offset * stride_vct + h[:, None] * stride_vch + d[None, :]
    if QUANTIZE:
        _quantize_store(k, k_dst, k_scale_ptr + block * stride_ksb + offset * stride_kst + h,
                        mask, h_mask)
        _quantize_store(v, v_dst, v_scale_ptr + block * stride_vsb + offset * stride_vst + h,
                        mask, h_mask)
    else:
        tl.store(k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_store(x, dst, scale_dst, mask, h_mask):
    xf = x.to(tl.float32)
    scale = tl.max(tl.abs(xf), 1) / 127.0
    q = xf / tl.maximum(scale, 1.1754943508222875e-38)[:, None]
    q = tl.where(q >= 0, tl.floor(q + 0.5), tl.ceil(q - 0.5))
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(dst, q.to(tl.int8), mask=mask)
    tl.store(scale_dst, scale, mask=h_mask)


def _check(key, value, key_cache, value_cache, slot_mapping, key_scale_cache,
           value_scale_cache) -> None:
    check_tensor("key", key, 3, FLOAT_DTYPES)
    check_tensor("value", value, 3, (key.dtype,))
    if value.shape != key.shape:
        raise KernelArgumentError("value", f"shape {tuple(value.shape)} differs from key "
                                           f"{tuple(key.shape)}")
    check_kv_pages(key_cache, value_cache, FLOAT_DTYPES + (torch.int8,), key.shape[2],
                   key.shape[1])
    check_tensor("slot_mapping", slot_mapping, 1, (torch.int64, torch.int32))
    check_dim("slot_mapping", slot_mapping, 0, key.shape[0])
    quantized = key_cache.dtype == torch.int8
    for name, scales in (("key_scale_cache", key_scale_cache),
                         ("value_scale_cache", value_scale_cache)):
        if not quantized:
            if scales is not None:
                raise KernelArgumentError(name, "only an INT8 cache takes scales")
            continue
        if scales is None:
            raise KernelArgumentError(name, "an INT8 cache needs its fp32 scale tensor")
        check_tensor(name, scales, 3, (torch.float32,))
        if tuple(scales.shape) != tuple(key_cache.shape[:3]):
            raise KernelArgumentError(name, f"shape must be {tuple(key_cache.shape[:3])}, got "
                                            f"{tuple(scales.shape)}")
    check_same_device(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                      slot_mapping=slot_mapping, key_scale_cache=key_scale_cache,
                      value_scale_cache=value_scale_cache)


def write_kv_pages(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   key_scale_cache: torch.Tensor | None = None,
                   value_scale_cache: torch.Tensor | None = None, *,
                   use_triton: bool | None = None) -> None:
    """Shapes as in write_kv_pages_ref; the caches may be strided views of the page-major pool
    (head_dim contiguous). Writes in place."""
    _check(key, value, key_cache, value_cache, slot_mapping, key_scale_cache, value_scale_cache)
    if not use_triton_for(use_triton, key):
        write_kv_pages_ref(key, value, key_cache, value_cache, slot_mapping, key_scale_cache,
                           value_scale_cache)
        return
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    quantized = key_cache.dtype == torch.int8
    k_scales = key_scale_cache if quantized else key_cache
    v_scales = value_scale_cache if quantized else value_cache
    _kv_write_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, k_scales, v_scales, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        k_scales.stride(0), k_scales.stride(1), v_scales.stride(0), v_scales.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=next_power_of_2(num_kv_heads), HEAD_DIM=head_dim,
        HEAD_PAD=next_power_of_2(head_dim), BLOCK_SIZE=key_cache.shape[1], QUANTIZE=quantized,
        num_warps=4)
