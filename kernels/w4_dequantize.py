"""A W4A16 weight (w4a16_gemm.py's layout) dequantized into a dense [K, N] matrix of the
activations' dtype, and the product of many rows through it.

Past the decode kernels' 16 rows the W4A16 GEMM unpacks every code once per tile of rows and
runs at 0.12-0.62x cuBLAS bf16, where dequantizing the weight and cuBLAS's GEMM together take
0.37-0.70x on the 8B projections, and less time than the 4-bit GEMM summed over a layer's four
from 17 rows on (benchmarks/RESULTS.md, "W4A16 for many rows"). So a product of more rows
writes the weight out once in x's dtype (a read of its 4-bit bytes and a write of 16 bits per
weight: 0.8-1.4x the time of cuBLAS reading a bf16 weight at 16 rows, measured) and multiplies
through cuBLAS: a prefill or a large decode batch pays that once per projection per step, and a
decode step of few rows keeps the 4-bit kernels. The dense weight lives only for the product."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import KernelArgumentError
from kernels.w4a16_decode import MAX_DECODE_ROWS

DEQUANT_MIN_ROWS = MAX_DECODE_ROWS + 1      # the decode kernels take up to 16 rows
BLOCK_R = 16            # packed rows a program unpacks (128 input channels)
BLOCK_N = 128


@triton.jit
def _dequantize_kernel(qw_ptr, qz_ptr, scale_ptr, gidx_ptr, out_ptr, R, N, group_size,
                       stride_qw, stride_qz, stride_s, stride_o,
                       BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, ONE_GROUP: tl.constexpr,
                       ACT_ORDER: tl.constexpr):
    """One tile of BLOCK_R packed rows x BLOCK_N columns: eight planes of output rows 8r + i.
    ONE_GROUP: the tile's 8 * BLOCK_R channels lie in one group, whose scales and zeros are
    loaded once; else each channel's group is read (k // group_size, or g_idx[k])."""
    rr = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_mask = rr < R
    n_mask = rn < N
    mask = r_mask[:, None] & n_mask[None, :]
    packed = tl.load(qw_ptr + rr[:, None] * stride_qw + rn[None, :], mask=mask, other=0)
    zero_shift = (rn % 8) * 4
    if ONE_GROUP:
        g = (tl.program_id(0) * BLOCK_R * 8) // group_size
        zeros = (tl.load(qz_ptr + g * stride_qz + rn // 8, mask=n_mask, other=0)
                 >> zero_shift) & 0xF
        scale = tl.load(scale_ptr + g * stride_s + rn, mask=n_mask, other=0.0).to(tl.float32)
    for i in tl.static_range(8):
        k = rr * 8 + i
        code = (packed >> (4 * i)) & 0xF
        if ONE_GROUP:
            w = (code - zeros[None, :]).to(tl.float32) * scale[None, :]
        else:
            if ACT_ORDER:
                g_row = tl.load(gidx_ptr + k, mask=r_mask, other=0)
            else:
                g_row = k // group_size
            zero_word = tl.load(qz_ptr + g_row[:, None] * stride_qz + (rn // 8)[None, :],
                                mask=mask, other=0)
            row_scale = tl.load(scale_ptr + g_row[:, None] * stride_s + rn[None, :], mask=mask,
                                other=0.0)
            w = (code - ((zero_word >> zero_shift[None, :]) & 0xF)).to(tl.float32) \
                * row_scale.to(tl.float32)
        tl.store(out_ptr + k[:, None] * stride_o + rn[None, :], w.to(out_ptr.dtype.element_ty),
                 mask=mask)


def dequantize_w4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                  group_size: int, g_idx: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """[K, N] in `dtype`, K = 8 * qweight's rows: (code - zero) * scale of each channel's group.
    Arguments as checked by w4a16_gemm.check_w4a16_args."""
    rows, n = qweight.shape
    if rows * 8 * n >= 2**31:
        raise KernelArgumentError("qweight", "more than 2**31 weights to dequantize at once")
    out = torch.empty((rows * 8, n), dtype=dtype, device=qweight.device)
    if rows == 0 or n == 0:
        return out
    grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(n, BLOCK_N))
    one_group = g_idx is None and group_size % (8 * BLOCK_R) == 0
    _dequantize_kernel[grid](qweight, qzeros, scales, g_idx if g_idx is not None else qzeros,
                             out, rows, n, group_size, qweight.stride(0), qzeros.stride(0),
                             scales.stride(0), out.stride(0), BLOCK_R=BLOCK_R, BLOCK_N=BLOCK_N,
                             ONE_GROUP=one_group, ACT_ORDER=g_idx is not None, num_warps=4)
    return out


def dequantized_product(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                        scales: torch.Tensor, group_size: int, g_idx: torch.Tensor | None,
                        bias: torch.Tensor | None, perm: torch.Tensor | None) -> torch.Tensor:
    """w4a16_gemm's result for many rows: the weight dequantized, then one dense GEMM."""
    weight = dequantize_w4(qweight, qzeros, scales, group_size, g_idx, x.dtype)
    if perm is not None:
        x = x.index_select(1, perm)
    if bias is None:
        return torch.mm(x, weight)
    return torch.addmm(bias, x, weight)
