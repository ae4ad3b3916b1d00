"""W8A16 GEMM: y = x @ (W * scale)^T + bias, with int8 weights W [N, K], one fp32 scale per
output channel, and fp16/bf16 activations.

The weights are dequantized inside the kernel (int8 -> activation dtype in registers, the scale
applied once to the accumulator, since it is constant along K), so decode streams half the bytes
of a bf16 weight. For decode's few rows the tile is 16 rows by a narrow band of columns with a
long K step, so every SM keeps enough weight bytes in flight; split-K is there for weights with
few output columns.

A launch may swap the operands (`swap_ab`): the kernel then computes the output's transpose, the
dequantized weight tile first. An MMA's first operand may be read from registers, its second
must sit in shared memory; a weight converted in registers as the second operand goes back
through shared memory before every MMA, as the first it does not. When K is a multiple of the
K step (times the split), the K loop loads without masks."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import (FLOAT_DTYPES, KernelArgumentError, check_dim, check_same_device,
                               check_tensor, use_triton_for)
from kernels.gemm_launch import GemmLaunch, gemm_launch


def w8a16_gemm_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """The specification. x: [M, K]; weight: int8 [N, K]; weight_scale: fp32 [N]; bias: [N]."""
    out = (x.float() @ weight.float().t()) * weight_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@triton.jit
def _tile_origin(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped order: GROUP_M row tiles walk one band of columns before the next band."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def _rows_by_cols(x_rows, w_cols, k_start, k_end, m_mask, n_mask,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] = x tile @ dequantized weight tile^T, over k_start..k_end."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            a = tl.load(x_rows + rk[None, :], mask=m_mask[:, None], other=0.0)
            w = tl.load(w_cols + rk[:, None], mask=n_mask[None, :], other=0)
        else:
            k_mask = rk < k_end
            a = tl.load(x_rows + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_cols + rk[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0)
        acc += tl.dot(a, w.to(a.dtype))
    return acc


@triton.jit
def _cols_by_rows(x_rows, w_cols, k_start, k_end, m_mask, n_mask,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  EVEN_K: tl.constexpr):
    """The same product transposed, acc [BLOCK_N, BLOCK_M] = weight tile @ x tile^T: the
    dequantized weight is the MMA's first operand, which may come from registers, so it does
    not make a round trip through shared memory after its conversion."""
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            a = tl.load(x_rows + rk[:, None], mask=m_mask[None, :], other=0.0)
            w = tl.load(w_cols + rk[None, :], mask=n_mask[:, None], other=0)
        else:
            k_mask = rk < k_end
            a = tl.load(x_rows + rk[:, None], mask=k_mask[:, None] & m_mask[None, :], other=0.0)
            w = tl.load(w_cols + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        acc += tl.dot(w.to(a.dtype), a)
    return acc


# M varies with the batch: not specialized on, so a new row count never compiles anew.
@triton.jit(do_not_specialize=["M"])
def _w8a16_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K,
                  stride_xm, stride_wn, stride_om,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr,
                  SWAP_AB: tl.constexpr, EVEN_K: tl.constexpr):
    m0, n0 = _tile_origin(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = m0 + tl.arange(0, BLOCK_M)
    rn = n0 + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = tl.program_id(1) * k_span
    k_end = tl.minimum(K, k_start + k_span)
    scale = tl.load(scale_ptr + rn, mask=n_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        bias = tl.where(tl.program_id(1) == 0, bias, 0.0)
    if SWAP_AB:
        acc = _cols_by_rows(x_ptr + rm[None, :].to(tl.int64) * stride_xm,
                            w_ptr + rn[:, None].to(tl.int64) * stride_wn, k_start, k_end, m_mask,
                            n_mask, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
        acc *= scale[:, None]
        if HAS_BIAS:
            acc += bias[:, None]
        out = out_ptr + rm[None, :].to(tl.int64) * stride_om + rn[:, None]
        mask = n_mask[:, None] & m_mask[None, :]
    else:
        acc = _rows_by_cols(x_ptr + rm[:, None].to(tl.int64) * stride_xm,
                            w_ptr + rn[None, :].to(tl.int64) * stride_wn, k_start, k_end, m_mask,
                            n_mask, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
        acc *= scale[None, :]
        if HAS_BIAS:
            acc += bias[None, :]
        out = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
        mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask, sem="relaxed")


def check_int8_gemm_args(x, weight, weight_scale, bias) -> None:
    check_tensor("x", x, 2, FLOAT_DTYPES)
    check_tensor("weight", weight, 2, (torch.int8,))
    check_dim("weight", weight, 1, x.shape[1])
    check_tensor("weight_scale", weight_scale, 1, (torch.float32,))
    check_dim("weight_scale", weight_scale, 0, weight.shape[0])
    if bias is not None:
        check_tensor("bias", bias, 1, (x.dtype,))
        check_dim("bias", bias, 0, weight.shape[0])
    check_same_device(x=x, weight=weight, weight_scale=weight_scale, bias=bias)


def w8a16_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None = None, *, use_triton: bool | None = None,
               launch: GemmLaunch | None = None) -> torch.Tensor:
    """x: [M, K] fp16/bf16 (fp32 too, for CPU), rows may be strided; weight: int8 [N, K]
    row-major; weight_scale: fp32 [N]; bias: [N] in x's dtype. Returns [M, N] in x's dtype."""
    check_int8_gemm_args(x, weight, weight_scale, bias)
    if not use_triton_for(use_triton, x):
        return w8a16_gemm_ref(x, weight, weight_scale, bias)
    (m, k), n = x.shape, weight.shape[0]
    launch = launch or gemm_launch("w8a16", m, n, k)
    if launch.split_k > 1 and x.dtype != torch.float32:
        # Slices meet in an fp32 buffer by atomic adds, then one cast.
        acc = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    else:
        acc = torch.empty((m, n), dtype=x.dtype, device=x.device)
        if launch.split_k > 1:
            acc.zero_()
    if m == 0 or n == 0:
        return acc.to(x.dtype)
    if k == 0:
        raise KernelArgumentError("x", "K must be > 0")
    grid = (triton.cdiv(m, launch.block_m) * triton.cdiv(n, launch.block_n), launch.split_k)
    _w8a16_kernel[grid](
        x, weight, weight_scale, bias if bias is not None else weight_scale, acc, m, n, k,
        x.stride(0), weight.stride(0), acc.stride(0),
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, BLOCK_K=launch.block_k,
        SPLIT_K=launch.split_k, GROUP_M=launch.group_m, HAS_BIAS=bias is not None,
        SWAP_AB=launch.swap_ab, EVEN_K=k % (launch.block_k * launch.split_k) == 0,
        num_warps=launch.num_warps, num_stages=launch.num_stages)
    return acc if acc.dtype == x.dtype else acc.to(x.dtype)
