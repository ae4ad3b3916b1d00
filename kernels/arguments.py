"""Argument checks shared by the kernel wrappers, and the choice between the Triton kernel and the
torch reference. A wrong shape, dtype or stride is a caller's bug: it gets a typed error naming
the argument and what was expected, before anything is launched."""

from __future__ import annotations

from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


class KernelArgumentError(ValueError):
    """An argument of a kernel wrapper has the wrong shape, dtype, device or stride."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.argument = name


def check_tensor(name: str, t: torch.Tensor, ndim: int,
                 dtypes: Iterable[torch.dtype] | None = None,
                 inner_contiguous: int = 1) -> None:
    """`inner_contiguous` trailing dimensions must be laid out densely (row-major), which is what
    the kernels' pointer arithmetic assumes; outer dimensions may have any stride."""
    if not isinstance(t, torch.Tensor):
        raise KernelArgumentError(name, f"expected a tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise KernelArgumentError(name, f"expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise KernelArgumentError(name, f"dtype must be one of {dtypes}, got {t.dtype}")
    expected = 1
    for dim in range(ndim - 1, ndim - 1 - inner_contiguous, -1):
        if t.shape[dim] > 1 and t.stride(dim) != expected:
            raise KernelArgumentError(
                name, f"the last {inner_contiguous} dimension(s) must be contiguous, "
                      f"got strides {t.stride()} for shape {tuple(t.shape)}")
        expected *= t.shape[dim]


def check_dim(name: str, t: torch.Tensor, dim: int, size: int) -> None:
    if t.shape[dim] != size:
        raise KernelArgumentError(name, f"dimension {dim} must be {size}, got shape "
                                        f"{tuple(t.shape)}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    device = None
    for t in tensors.values():      # runs on every launch: one pass, no containers
        if t is None:
            continue
        if device is None:
            device = t.device
        elif t.device != device:
            present = {n: t for n, t in tensors.items() if t is not None}
            listing = ", ".join(f"{n} on {t.device}" for n, t in present.items())
            raise KernelArgumentError(next(iter(present)),
                                      f"tensors must share a device: {listing}")


def check_kv_pages(key_cache: torch.Tensor, value_cache: torch.Tensor,
                   dtypes: Iterable[torch.dtype], head_dim: int,
                   num_kv_heads: int | None = None) -> None:
    """Key and value pages [blocks, block_size, kv_heads, head_dim], alike in shape, of one of
    `dtypes`, with head_dim (and num_kv_heads, when given) as the other tensors have them."""
    check_tensor("key_cache", key_cache, 4, dtypes)
    check_tensor("value_cache", value_cache, 4, (key_cache.dtype,))
    if value_cache.shape != key_cache.shape:
        raise KernelArgumentError("value_cache", f"shape {tuple(value_cache.shape)} differs from "
                                                 f"key_cache {tuple(key_cache.shape)}")
    if num_kv_heads is not None:
        check_dim("key_cache", key_cache, 2, num_kv_heads)
    check_dim("key_cache", key_cache, 3, head_dim)


def check_paged_kv(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    """Queries [tokens, heads, head_dim] against key/value pages [blocks, block_size, kv_heads,
    head_dim] of the query's dtype, with the query heads a multiple of the KV heads (GQA)."""
    check_tensor("q", q, 3, FLOAT_DTYPES)
    check_kv_pages(key_cache, value_cache, (q.dtype,), q.shape[2])
    if q.shape[1] % key_cache.shape[2]:
        raise KernelArgumentError("q", f"num_heads ({q.shape[1]}) must be a multiple of "
                                       f"num_kv_heads ({key_cache.shape[2]})")


def output_like(out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """Where an attention result shaped and typed as q goes: `out`, checked (any outer strides,
    head_dim contiguous), or a new tensor."""
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    check_tensor("out", out, q.dim(), (q.dtype,))
    if out.shape != q.shape or out.device != q.device:
        raise KernelArgumentError("out", f"must be {tuple(q.shape)} on {q.device}, got "
                                         f"{tuple(out.shape)} on {out.device}")
    return out


def use_triton_for(use_triton: bool | None, t: torch.Tensor) -> bool:
    """None: the Triton kernel on CUDA tensors, the reference elsewhere. True forces the kernel
    (CPU tensors then need Triton's interpreter, as the tests run it); False the reference."""
    if use_triton is None:
        return t.is_cuda
    return bool(use_triton)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
