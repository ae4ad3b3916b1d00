"""RMSNorm, optionally fused with the residual add that precedes it: one pass reads x (and the
residual) once and writes the normalised row (and the new residual) once."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import (FLOAT_DTYPES, KernelArgumentError, check_dim, check_same_device,
                               check_tensor, next_power_of_2, use_triton_for)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The specification (HF Llama order: normalise in fp32, cast, then scale). With a residual:
    x = x + residual first, and the sum is returned as the new residual."""
    if residual is not None:
        x = x + residual
        residual = x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype), residual


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, eps, hidden,
                     stride_x, stride_r, stride_o, stride_ro,
                     BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # The sum is rounded to x's dtype first, as the reference (and HF) do.
        x = x + tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        tl.store(residual_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(xf * xf, 0) / hidden + eps)
    normed = (xf * inv_rms).to(x.dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None, *, use_triton: bool | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x: [num_tokens, hidden] (rows may be strided); weight: [hidden]; residual like x.
    Returns (normalised, new residual or None) as new tensors."""
    check_tensor("x", x, 2, FLOAT_DTYPES)
    check_tensor("weight", weight, 1, FLOAT_DTYPES)
    check_dim("weight", weight, 0, x.shape[1])
    if residual is not None:
        check_tensor("residual", residual, 2, (x.dtype,))
        if residual.shape != x.shape:
            raise KernelArgumentError("residual", f"shape {tuple(residual.shape)} differs from x "
                                                  f"{tuple(x.shape)}")
    check_same_device(x=x, weight=weight, residual=residual)
    if not use_triton_for(use_triton, x):
        return rms_norm_ref(x, weight, eps, residual)
    num_tokens, hidden = x.shape
    out = torch.empty((num_tokens, hidden), dtype=torch.promote_types(x.dtype, weight.dtype),
                      device=x.device)
    residual_out = torch.empty_like(x, memory_format=torch.contiguous_format) \
        if residual is not None else None
    if num_tokens == 0:
        return out, residual_out
    block = next_power_of_2(hidden)
    _rms_norm_kernel[(num_tokens,)](
        x, residual if residual is not None else x, weight, out,
        residual_out if residual_out is not None else out, eps, hidden,
        x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
        residual_out.stride(0) if residual_out is not None else 0,
        BLOCK=block, HAS_RESIDUAL=residual is not None,
        num_warps=max(1, min(16, block // 512)))
    return out, residual_out
