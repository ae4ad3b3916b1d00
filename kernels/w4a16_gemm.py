"""W4A16 GEMM: y = x @ W^T + bias with 4-bit weights in GPTQ's packed layout and fp16/bf16
activations. With K input and N output channels:

- qweight int32 [K/8, N]: the 4-bit code of (k, n) is bits 4*(k%8) .. 4*(k%8)+3 of qweight[k//8, n]
  (eight consecutive input channels per word, the lowest first);
- qzeros int32 [G, N/8]: the zero point of group g, column n, is bits 4*(n%8).. of qzeros[g, n//8],
  stored as the zero itself (GPTQ v1's stored-minus-one and AWQ's interleaved order are undone
  when the checkpoint is loaded, see services/engine/model/int4_layouts.py);
- scales [G, N] (fp16, bf16 or fp32);
- the group of packed row k is g_idx[k] (act order: any map), or k // group_size;
- packed row k multiplies input channel perm[k] when a permutation is given, else channel k.

So y[m, n] = sum_k x[m, perm[k]] (code(k, n) - zero(g, n)) * scale(g, n), g = group of row k.

Act order two ways: GPTQ's desc_act checkpoints give every input channel a group through g_idx,
groups scattered along K. The kernel can gather each element's scale and zero by g_idx, or, when
the rows were sorted by group at load time (int4_linear.py does, when every group is full), read
contiguous groups like any other checkpoint and gather the activations' columns through `perm`
instead: a few activation elements per K step rather than a scale and a zero per weight element.

One layout serves both formats: GPTQ's packing along K keeps each 32-bit load a run of eight input
channels of one output column, so a tile of columns is read coalesced along N, and a per-channel
group index (act order) needs no repacking; AWQ checkpoints are repacked to it once at load time.

The codes are unpacked and dequantized in registers, so decode streams a quarter of a bf16
weight's bytes. When each K step lies inside one group (no act order, BLOCK_K dividing the group
size) the zero is subtracted from the codes (small integers, exact in 16-bit floats) and the
scale multiplies the fp32 partial sum once per step (sorted act order included); with act order
by g_idx every element gathers its own group's scale and zero.

Decode's few rows (M <= 16) go to w4a16_decode.py's kernels, built for a weight stream (nibble
planes instead of the [BK/8, 8, BN] -> [BK, BN] reshape, codes without conversion instructions,
the zero point folded out of the loop, split-K inside one launch), unless act order comes as
g_idx, the groups leave no K step of 8 channels inside one group, or the tensors are past
32-bit indexing; then, and for more rows, the kernel below runs, up to w4_dequantize.py's
DEQUANT_MIN_ROWS rows; past them the weight is dequantized and multiplied by cuBLAS."""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from kernels.arguments import (FLOAT_DTYPES, KernelArgumentError, check_dim, check_same_device,
                               check_tensor, use_triton_for)
from kernels.gemm_launch import GemmLaunch, W4DecodeLaunch, gemm_launch, w4_decode_launch
from kernels.w4_dequantize import DEQUANT_MIN_ROWS, dequantized_product
from kernels.w4a16_decode import MAX_DECODE_ROWS, decode_steps, fits_int32, w4a16_decode
from kernels.w8a16_gemm import _tile_origin

PACK = 8            # 4-bit codes per int32 word
MIN_BLOCK_K = 16    # tl.dot's smallest K


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] -> int32 [8R, C]: row 8r + i is nibble i (bits 4i..4i+3) of row r."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    codes = (packed[:, None, :] >> shifts[None, :, None]) & 0xF
    return codes.reshape(packed.shape[0] * PACK, packed.shape[1])


def unpack_int4_cols(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] -> int32 [R, 8C]: column 8c + i is nibble i of column c."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    codes = (packed[:, :, None] >> shifts[None, None, :]) & 0xF
    return codes.reshape(packed.shape[0], packed.shape[1] * PACK)


def group_index(k: int, group_size: int, g_idx: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    if g_idx is not None:
        return g_idx.long()
    return torch.arange(k, device=device) // group_size


def dequantize_w4_ref(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                      group_size: int, g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """The fp32 weight [K, N] (packed rows, input-major) that the codes stand for."""
    codes = unpack_int4_rows(qweight)
    zeros = unpack_int4_cols(qzeros)
    groups = group_index(codes.shape[0], group_size, g_idx, qweight.device)
    return (codes - zeros[groups]).float() * scales[groups].float()


def w4a16_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                   scales: torch.Tensor, group_size: int, g_idx: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None,
                   perm: torch.Tensor | None = None) -> torch.Tensor:
    """The specification: unpack the layout literally, dequantize in fp32, multiply."""
    if perm is not None:
        x = x[:, perm.long()]
    out = x.float() @ dequantize_w4_ref(qweight, qzeros, scales, group_size, g_idx)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


# M varies with the batch: not specialized on, so a new row count never compiles anew.
@triton.jit(do_not_specialize=["M"])
def _w4a16_kernel(x_ptr, qw_ptr, qz_ptr, scale_ptr, gidx_ptr, perm_ptr, bias_ptr, out_ptr, M, N, K,
                  group_size, stride_xm, stride_qw, stride_qz, stride_s, stride_om,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr,
                  ACT_ORDER: tl.constexpr, PERMUTED: tl.constexpr,
                  GROUP_ALIGNED: tl.constexpr):
    m0, n0 = _tile_origin(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = m0 + tl.arange(0, BLOCK_M)
    rn = n0 + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = tl.program_id(1) * k_span
    k_end = tl.minimum(K, k_start + k_span)     # K and k_span are multiples of 8
    x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    qw_cols = qw_ptr + rn[None, :]
    zero_shift = (rn % 8) * 4
    nibble_shift = tl.arange(0, 8) * 4
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < k_end
        if PERMUTED:
            src = tl.load(perm_ptr + rk, mask=k_mask, other=0)
        else:
            src = rk
        a = tl.load(x_rows + src[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        # Each word is loaded once and spread over its eight input channels: [BK/8, 8, BN].
        rp = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        packed = tl.load(qw_cols + rp[:, None].to(tl.int64) * stride_qw,
                         mask=(rp < k_end // 8)[:, None] & n_mask[None, :], other=0)
        codes = (packed[:, None, :] >> nibble_shift[None, :, None]) & 0xF
        codes = tl.reshape(codes, (BLOCK_K, BLOCK_N))
        if GROUP_ALIGNED:
            g = k0 // group_size
            scale = tl.load(scale_ptr + g * stride_s + rn, mask=n_mask, other=0.0)
            zero = (tl.load(qz_ptr + g * stride_qz + rn // 8, mask=n_mask, other=0)
                    >> zero_shift) & 0xF
            centred = (codes - zero[None, :]).to(a.dtype)
            acc += tl.dot(a, centred) * scale.to(tl.float32)[None, :]
        else:
            if ACT_ORDER:
                g = tl.load(gidx_ptr + rk, mask=k_mask, other=0)
            else:
                g = rk // group_size
            mask = k_mask[:, None] & n_mask[None, :]
            scale = tl.load(scale_ptr + g[:, None] * stride_s + rn[None, :], mask=mask, other=0.0)
            zero = (tl.load(qz_ptr + g[:, None] * stride_qz + (rn // 8)[None, :], mask=mask,
                            other=0) >> zero_shift[None, :]) & 0xF
            w = ((codes - zero).to(tl.float32) * scale.to(tl.float32)).to(a.dtype)
            acc += tl.dot(a, w)
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask, sem="relaxed")


def num_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def check_w4a16_args(x, qweight, qzeros, scales, group_size, g_idx, bias, perm) -> None:
    check_tensor("x", x, 2, FLOAT_DTYPES)
    if x.shape[1] % PACK:
        raise KernelArgumentError("x", f"K must be a multiple of {PACK}, got {x.shape[1]}")
    check_tensor("qweight", qweight, 2, (torch.int32,))
    check_dim("qweight", qweight, 0, x.shape[1] // PACK)
    n = qweight.shape[1]
    if n % PACK:
        raise KernelArgumentError("qweight", f"N must be a multiple of {PACK}, got {n}")
    if not isinstance(group_size, int) or group_size <= 0:
        raise KernelArgumentError("group_size", f"must be a positive int, got {group_size!r}")
    groups = num_groups(x.shape[1], group_size)
    check_tensor("qzeros", qzeros, 2, (torch.int32,))
    check_dim("qzeros", qzeros, 0, groups)
    check_dim("qzeros", qzeros, 1, n // PACK)
    check_tensor("scales", scales, 2, FLOAT_DTYPES)
    check_dim("scales", scales, 0, groups)
    check_dim("scales", scales, 1, n)
    if g_idx is not None:
        check_tensor("g_idx", g_idx, 1, (torch.int32,))
        check_dim("g_idx", g_idx, 0, x.shape[1])
    if perm is not None:
        check_tensor("perm", perm, 1, (torch.int32,))
        check_dim("perm", perm, 0, x.shape[1])
    if bias is not None:
        check_tensor("bias", bias, 1, (x.dtype,))
        check_dim("bias", bias, 0, n)
    check_same_device(x=x, qweight=qweight, qzeros=qzeros, scales=scales, g_idx=g_idx, bias=bias,
                      perm=perm)


_UNALIGNED_STAGES = 2


def aligned_block_k(launch: GemmLaunch, group_size: int, act_order: bool) -> GemmLaunch | None:
    """The launch with a K step inside one group (the largest power of two <= block_k dividing
    group_size), or None when there is none (act order, or a group size such as 40)."""
    if act_order:
        return None
    block_k = launch.block_k
    while block_k > MIN_BLOCK_K and group_size % block_k:
        block_k //= 2
    if group_size % block_k:
        return None
    return dataclasses.replace(launch, block_k=block_k)


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
               scales: torch.Tensor, group_size: int, g_idx: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, perm: torch.Tensor | None = None, *,
               use_triton: bool | None = None,
               launch: GemmLaunch | W4DecodeLaunch | None = None) -> torch.Tensor:
    """x: [M, K] fp16/bf16 (fp32 too, for CPU), rows may be strided; qweight int32 [K/8, N],
    qzeros int32 [G, N/8], scales [G, N] with G = ceil(K / group_size); g_idx int32 [K] or None
    (group k // group_size); bias [N] in x's dtype; perm int32 [K] or None (row k multiplies
    x[:, perm[k]]). Returns [M, N] in x's dtype. `launch`: a GemmLaunch runs the general
    kernel, a W4DecodeLaunch the decode kernels (where they apply), None picks by M (from
    DEQUANT_MIN_ROWS rows on, the weight dequantized and a dense GEMM: w4_dequantize.py)."""
    check_w4a16_args(x, qweight, qzeros, scales, group_size, g_idx, bias, perm)
    if not use_triton_for(use_triton, x):
        return w4a16_gemm_ref(x, qweight, qzeros, scales, group_size, g_idx, bias, perm)
    (m, k), n = x.shape, qweight.shape[1]
    if launch is None and m >= DEQUANT_MIN_ROWS:
        return dequantized_product(x, qweight, qzeros, scales, group_size, g_idx, bias, perm)
    decode = launch if isinstance(launch, W4DecodeLaunch) else None
    if launch is None:
        decode = w4_decode_launch(m, n, k)
    if decode is not None and 0 < m <= MAX_DECODE_ROWS and n > 0 and k > 0 and g_idx is None:
        steps = decode_steps(decode, group_size, x.dtype)
        if steps is not None and fits_int32(x, qweight, scales, decode.split_k):
            return w4a16_decode(x, qweight, qzeros, scales, group_size, bias, perm, decode,
                                steps)
    if not isinstance(launch, GemmLaunch):
        launch = gemm_launch("w4a16", m, n, k)
    aligned = aligned_block_k(launch, group_size, g_idx is not None)
    # The per-element scale/zero path holds more per stage: fewer stages keep it within shared
    # memory (groups smaller than a K step, e.g. 8, overflowed 227 KiB at 4 stages on an H200).
    launch = aligned or dataclasses.replace(launch, num_stages=min(launch.num_stages, _UNALIGNED_STAGES))
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
    _w4a16_kernel[grid](
        x, qweight, qzeros, scales, g_idx if g_idx is not None else qzeros,
        perm if perm is not None else qzeros, bias if bias is not None else scales, acc, m, n, k,
        group_size,
        x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), acc.stride(0),
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, BLOCK_K=launch.block_k,
        SPLIT_K=launch.split_k, GROUP_M=launch.group_m, HAS_BIAS=bias is not None,
        ACT_ORDER=g_idx is not None, PERMUTED=perm is not None, GROUP_ALIGNED=aligned is not None,
        num_warps=launch.num_warps, num_stages=launch.num_stages)
    return acc if acc.dtype == x.dtype else acc.to(x.dtype)
