"""W8A8 GEMM: activations quantized per token at run time (kernels/quantize_rows.py), int8 x int8
products on the tensor cores with int32 accumulation, and one scaled epilogue:
y = (xq @ Wq^T) * x_scale[:, None] * w_scale[None, :] + bias."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import check_tensor, check_dim, use_triton_for
from kernels.gemm_launch import GemmLaunch, gemm_launch
from kernels.quantize_rows import quantize_rows, quantize_rows_ref
from kernels.w8a16_gemm import _tile_origin, check_int8_gemm_args


def w8a8_gemm_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """The specification. x: [M, K] float; weight: int8 [N, K]; weight_scale: fp32 [N]."""
    xq, x_scale = quantize_rows_ref(x)
    return int8_scaled_mm_ref(xq, x_scale, weight, weight_scale, bias, x.dtype)


def int8_scaled_mm_ref(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                       weight_scale: torch.Tensor, bias: torch.Tensor | None,
                       out_dtype: torch.dtype) -> torch.Tensor:
    acc = (xq.double() @ weight.double().t()).float()      # exact: int32 sums fit in fp64
    out = acc * x_scale[:, None] * weight_scale[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


# M varies with the batch: not specialized on, so a new row count never compiles anew.
@triton.jit(do_not_specialize=["M"])
def _int8_scaled_mm_kernel(a_ptr, a_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K,
                           stride_am, stride_wn, stride_om,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
                           HAS_BIAS: tl.constexpr):
    m0, n0 = _tile_origin(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = m0 + tl.arange(0, BLOCK_M)
    rn = n0 + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = tl.program_id(1) * k_span
    k_end = tl.minimum(K, k_start + k_span)
    a_rows = a_ptr + rm[:, None].to(tl.int64) * stride_am
    w_cols = w_ptr + rn[None, :].to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.int32)
    for k0 in range(k_start, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < k_end
        a = tl.load(a_rows + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0)
        w = tl.load(w_cols + rk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0)
        acc += tl.dot(a, w, out_dtype=tl.int32)
    a_scale = tl.load(a_scale_ptr + rm, mask=m_mask, other=0.0)
    w_scale = tl.load(w_scale_ptr + rn, mask=n_mask, other=0.0)
    out = acc.to(tl.float32) * a_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            out += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    dst = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(dst, out, mask=mask, sem="relaxed")


def int8_scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                   weight_scale: torch.Tensor, bias: torch.Tensor | None,
                   out_dtype: torch.dtype, launch: GemmLaunch | None = None) -> torch.Tensor:
    """The GEMM half of W8A8, for callers that quantized the activations already."""
    check_tensor("xq", xq, 2, (torch.int8,))
    check_tensor("x_scale", x_scale, 1, (torch.float32,))
    check_dim("x_scale", x_scale, 0, xq.shape[0])
    (m, k), n = xq.shape, weight.shape[0]
    launch = launch or gemm_launch("w8a8", m, n, k)
    if launch.split_k > 1:
        out = torch.zeros((m, n), dtype=torch.float32, device=xq.device)   # slices add into it
    else:
        out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0 or n == 0:
        return out.to(out_dtype)
    grid = (triton.cdiv(m, launch.block_m) * triton.cdiv(n, launch.block_n), launch.split_k)
    _int8_scaled_mm_kernel[grid](
        xq, x_scale, weight, weight_scale, bias if bias is not None else weight_scale, out,
        m, n, k, xq.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, BLOCK_K=launch.block_k,
        SPLIT_K=launch.split_k, GROUP_M=launch.group_m, HAS_BIAS=bias is not None,
        num_warps=launch.num_warps, num_stages=launch.num_stages)
    return out if out.dtype == out_dtype else out.to(out_dtype)


def w8a8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
              bias: torch.Tensor | None = None, *, use_triton: bool | None = None,
              launch: GemmLaunch | None = None) -> torch.Tensor:
    """x: [M, K] float (rows may be strided); weight: int8 [N, K] row-major; weight_scale: fp32
    [N]; bias: [N] in x's dtype. Returns [M, N] in x's dtype."""
    check_int8_gemm_args(x, weight, weight_scale, bias)
    if not use_triton_for(use_triton, x):
        return w8a8_gemm_ref(x, weight, weight_scale, bias)
    xq, x_scale = quantize_rows(x, use_triton=True)
    return int8_scaled_mm(xq, x_scale, weight, weight_scale, bias, x.dtype, launch)
