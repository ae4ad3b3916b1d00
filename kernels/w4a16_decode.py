"""W4A16 for decode's few rows (M <= 16): w4a16_gemm.py's packed layout and arithmetic, in
kernels shaped for a weight stream rather than for tensor-core throughput.

At M <= 16 a projection reads its 4-bit weights once and does little arithmetic per byte. At an
H200's bandwidth each SM receives about 31 weights a cycle and issues at most 128 thread
instructions a cycle: about four instructions per weight, everything included, before the
arithmetic rather than the memory sets the time. So the kernels spend as few as they can per
nibble, and keep tens of KB per SM in flight:

- Nibble planes, no interleave. Nibble i of packed row r is input channel 8r + i, so a K step
  of R packed rows is eight planes of R x BLOCK_N codes, plane i multiplied by the activations
  8r + i (strided loads of a few bytes that stay in L1). Each word is loaded once, 16 bytes per
  thread along N; no [8R, N] tile is ever formed.
- Codes without int->float conversion instructions (a quarter of the FMA rate):
  * FMA kernel: `word & (15 << s)` read as fp32 is the denormal c * 2^(s-149), exact; the
    activation is pre-multiplied by 2^(85-s), so one AND and one FMA per weight accumulate
    x * c * 2^-64. Nibbles 0-4 are read in place (s = 0..16), 5-7 after one shift by 12. For
    bf16 the pre-multiplication is an add to the exponent field within the bf16 -> fp32 shift;
    a zero then becomes 2^(85-s-127), whose products c * 2^-191 round to exactly 0.
  * Tensor-core kernel: `((word >> 4q) & 0x000F000F) | 0x43004300` holds two bf16 numbers,
    128 + (nibble q) and 128 + (nibble q + 4) (1024 + c with 0x6400 for fp16), split into two
    planes by truncation; the 128 joins the zero point below.
- The zero point folded out: per group sum_k x_k (c_k - z) s = s (sum_k x_k c_k - z sum_k x_k),
  so the inner loop is only the code and the multiply-add.
- FMA (gemv) for one row: products accumulate per (packed row, column) in registers, summed
  over K once after the loop; no MMA layout at all. Tensor cores (dot) for more rows: one
  tl.dot per plane with the rows padded to 16.
- Split-K (for few columns and a long K) in the same launch (split_k.py): the last slice of a
  tile to arrive adds the others' partial sums.

A K step is GROUPS sub-steps of GROUP_ROWS packed rows, each inside one group (GROUP_ROWS * 8
divides group_size). Act order only as sorted rows with an input permutation; g_idx goes to
w4a16_gemm's kernel. Index math is 32-bit (the wrapper checks the spans). The FMA kernel assumes
|x| < 2^43 (x * 2^85 stays finite)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.gemm_launch import W4DecodeLaunch
from kernels.split_k import finish_tile, split_k_buffers

INT32_SPAN = 2**31
MAX_DECODE_ROWS = 16
MAX_SUB_STEPS = 8          # sub-steps unrolled in one K step (small groups)
MAX_SUB_STEP_K = 256       # channels per sub-step: 32 packed rows
MAX_WORDS_PER_THREAD = 32
DOT_MIN_ROWS = 16          # tl.dot's smallest K: 16 packed rows per sub-step
TWO_POW_64 = tl.constexpr(2.0**64)
TWO_POW_23 = tl.constexpr(2.0**23)


@triton.jit
def _pow2(EXP: tl.constexpr):
    """2^EXP as an fp32 scalar, built from its bits (EXP in -126..127)."""
    return tl.full([], (EXP + 127) << 23, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _fma_plane(packed, high, x_row, src, x_mask, PLANE: tl.constexpr, X_BF16: tl.constexpr,
               EVEN_K: tl.constexpr):
    """Plane PLANE of a [R, BN] tile: the codes as denormals c * 2^(s-149) [R, BN], the
    activations times 2^(85-s) [R], and the activations times 2^-23 [R]."""
    if PLANE < 5:
        word = packed
        SHIFT: tl.constexpr = 4 * PLANE
    else:
        word = high
        SHIFT: tl.constexpr = 4 * PLANE - 12
    codes = (word & (15 << SHIFT)).to(tl.float32, bitcast=True)
    if EVEN_K:
        x = tl.load(x_row + src)
    else:
        x = tl.load(x_row + src, mask=x_mask, other=0.0)
    if X_BF16:
        # bf16 -> fp32 is a 16-bit shift; adding to the exponent field scales in the same op.
        # A zero becomes 2^(85-s-127), whose products underflow to exactly 0 below.
        bits = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16) + ((85 - SHIFT) << 23)
        scaled = bits.to(tl.float32, bitcast=True)
    else:
        scaled = x.to(tl.float32) * _pow2(85 - SHIFT)
    return codes, scaled, scaled * _pow2(SHIFT - 108)


@triton.jit
def _group_scale_zero(qz_ptr, scale_ptr, r1, group_size, rn, mask, stride_qz, stride_s,
                      GROUP_LOG2: tl.constexpr):
    """Scale and zero point, as fp32 [BN], for columns rn of the group holding packed row r1.
    GROUP_LOG2: log2(group_size) when it is a power of two (a shift), else -1 (a division)."""
    if GROUP_LOG2 >= 0:
        g = (r1 * 8) >> GROUP_LOG2
    else:
        g = (r1 * 8) // group_size
    scale = tl.load(scale_ptr + g * stride_s + rn, mask=mask, other=0.0)
    word = tl.load(qz_ptr + g * stride_qz + rn // 8, mask=mask, other=0)
    # The nibble in the mantissa of 2^23, minus 2^23: the zero point without a conversion.
    bits = ((word >> ((rn % 8) * 4)) & 15) | 0x4B000000
    return scale.to(tl.float32), bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _k_slice(K, STEP: tl.constexpr, SPLIT_K: tl.constexpr):
    """Packed rows [start, end) of this program's K slice: whole steps except at K's end."""
    rows = K // 8
    span = tl.cdiv(tl.cdiv(rows, SPLIT_K), STEP) * STEP
    start = tl.program_id(1) * span
    return start, tl.minimum(rows, start + span)


# M varies with the batch: not specialized on, so a new row count never compiles anew.
@triton.jit(do_not_specialize=["M"])
def _w4a16_gemv_kernel(x_ptr, qw_ptr, qz_ptr, scale_ptr, perm_ptr, bias_ptr, out_ptr, part_ptr,
                       arrival_ptr, M, N, K, group_size, stride_xm, stride_qw, stride_qz,
                       stride_s, stride_om,
                       BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, GROUP_ROWS: tl.constexpr,
                       SPLIT_K: tl.constexpr, PERMUTED: tl.constexpr, HAS_BIAS: tl.constexpr,
                       EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, GROUP_LOG2: tl.constexpr,
                       X_BF16: tl.constexpr):
    """FMA, one activation row per program (row = program_id(0) % M, so the programs that share
    a band of weight columns run side by side and the band is read from DRAM once)."""
    STEP: tl.constexpr = GROUPS * GROUP_ROWS
    m = tl.program_id(0) % M
    rn = (tl.program_id(0) // M) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    rows = tl.arange(0, GROUP_ROWS)
    r_start, r_end = _k_slice(K, STEP, SPLIT_K)
    x_row = x_ptr + m * stride_xm
    w_tile = qw_ptr + rows[:, None] * stride_qw + rn[None, :]
    acc = tl.zeros([GROUP_ROWS, BLOCK_N], tl.float32)
    for r0 in range(r_start, r_end, STEP):
        for sub in tl.static_range(GROUPS):
            r1 = r0 + sub * GROUP_ROWS
            row_mask = (r1 + rows) < r_end
            if EVEN_K and EVEN_N:
                packed = tl.load(w_tile + r1 * stride_qw)
            else:
                packed = tl.load(w_tile + r1 * stride_qw,
                                 mask=row_mask[:, None] & n_mask[None, :], other=0)
            scale, zero = _group_scale_zero(qz_ptr, scale_ptr, r1, group_size, rn,
                                            n_mask & (rn * 0 + r1 < r_end), stride_qz, stride_s,
                                            GROUP_LOG2)
            high = packed >> 12
            channel = (r1 + rows) * 8
            dot = tl.zeros([GROUP_ROWS, BLOCK_N], tl.float32)
            x_sum = tl.zeros([GROUP_ROWS], tl.float32)       # in units of 2^-23
            for i in tl.static_range(8):
                if PERMUTED:
                    src = tl.load(perm_ptr + channel + i, mask=row_mask, other=0)
                else:
                    src = channel + i
                codes, scaled, unit = _fma_plane(packed, high, x_row, src, row_mask, i, X_BF16,
                                                 EVEN_K)
                dot += scaled[:, None] * codes
                x_sum += unit
            acc += (scale * TWO_POW_64)[None, :] * dot
            acc -= (scale * zero * TWO_POW_23)[None, :] * x_sum[:, None]
    finish_tile(tl.sum(acc, axis=0), out_ptr, m * stride_om + rn, part_ptr, m * N + rn, arrival_ptr,
            bias_ptr, rn, n_mask, M, N, HAS_BIAS, SPLIT_K)


@triton.jit(do_not_specialize=["M"])
def _w4a16_decode_dot_kernel(x_ptr, qw_ptr, qz_ptr, scale_ptr, perm_ptr, bias_ptr, out_ptr,
                             part_ptr, arrival_ptr, M, N, K, group_size, stride_xm, stride_qw,
                             stride_qz, stride_s, stride_om,
                             BLOCK_N: tl.constexpr, GROUPS: tl.constexpr,
                             GROUP_ROWS: tl.constexpr, SPLIT_K: tl.constexpr,
                             PERMUTED: tl.constexpr, HAS_BIAS: tl.constexpr,
                             EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                             GROUP_LOG2: tl.constexpr, CODE_BIAS: tl.constexpr,
                             CODE_OFFSET: tl.constexpr):
    """Tensor cores, all (up to 16) rows in one program: per sub-step and nibble plane a
    [16, GROUP_ROWS] x [GROUP_ROWS, BLOCK_N] dot of the plane's activations and codes."""
    STEP: tl.constexpr = GROUPS * GROUP_ROWS
    rm = tl.arange(0, 16)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    rows = tl.arange(0, GROUP_ROWS)
    r_start, r_end = _k_slice(K, STEP, SPLIT_K)
    x_rows = x_ptr + rm[:, None] * stride_xm
    w_tile = qw_ptr + rows[:, None] * stride_qw + rn[None, :]
    acc = tl.zeros([16, BLOCK_N], tl.float32)
    for r0 in range(r_start, r_end, STEP):
        for sub in tl.static_range(GROUPS):
            r1 = r0 + sub * GROUP_ROWS
            row_mask = (r1 + rows) < r_end
            if EVEN_K and EVEN_N:
                packed = tl.load(w_tile + r1 * stride_qw)
            else:
                packed = tl.load(w_tile + r1 * stride_qw,
                                 mask=row_mask[:, None] & n_mask[None, :], other=0)
            scale, zero = _group_scale_zero(qz_ptr, scale_ptr, r1, group_size, rn,
                                            n_mask & (rn * 0 + r1 < r_end), stride_qz, stride_s,
                                            GROUP_LOG2)
            channel = (r1 + rows) * 8
            if EVEN_K:
                x_mask = m_mask[:, None]
            else:
                x_mask = m_mask[:, None] & row_mask[None, :]
            dot = tl.zeros([16, BLOCK_N], tl.float32)
            x_sum = tl.zeros([16, GROUP_ROWS], tl.float32)
            for q in tl.static_range(4):
                pair = ((packed >> (4 * q)) & 0x000F000F) | CODE_BIAS
                if PERMUTED:
                    src_lo = tl.load(perm_ptr + channel + q, mask=row_mask, other=0)
                    src_hi = tl.load(perm_ptr + channel + q + 4, mask=row_mask, other=0)
                else:
                    src_lo = channel + q
                    src_hi = channel + q + 4
                x_lo = tl.load(x_rows + src_lo[None, :], mask=x_mask, other=0.0)
                x_hi = tl.load(x_rows + src_hi[None, :], mask=x_mask, other=0.0)
                lo = pair.to(tl.int16).to(x_lo.dtype, bitcast=True)
                hi = (pair >> 16).to(tl.int16).to(x_lo.dtype, bitcast=True)
                dot = tl.dot(x_lo, lo, dot)
                dot = tl.dot(x_hi, hi, dot)
                x_sum += x_lo.to(tl.float32) + x_hi.to(tl.float32)
            total = tl.sum(x_sum, axis=1)
            acc += scale[None, :] * (dot - (zero + CODE_OFFSET)[None, :] * total[:, None])
    mask = m_mask[:, None] & n_mask[None, :]
    finish_tile(acc, out_ptr, rm[:, None] * stride_om + rn[None, :], part_ptr,
            rm[:, None] * N + rn[None, :], arrival_ptr, bias_ptr, rn[None, :], mask, M, N,
            HAS_BIAS, SPLIT_K)


# 16-bit code patterns: two numbers (offset + nibble) per 32-bit word.
_CODE_BIAS = {torch.bfloat16: (0x43004300, 128.0), torch.float16: (0x64006400, 1024.0)}


def _largest_power_of_two_dividing(n: int) -> int:
    return n & -n


def decode_steps(launch: W4DecodeLaunch, group_size: int,
                 dtype: torch.dtype) -> tuple[bool, int, int] | None:
    """(use_dot, sub-steps per K step, packed rows per sub-step) for this launch, or None when
    no sub-step of at least 8 channels lies inside one group. The tensor-core kernel needs 16
    packed rows per sub-step and fp16/bf16 activations; else the launch runs as FMA."""
    # At most MAX_WORDS_PER_THREAD packed words per thread in a sub-step (more spilled).
    rows = max(1, MAX_WORDS_PER_THREAD * 32 * launch.num_warps // launch.block_n)
    sub_k = min(launch.block_k, _largest_power_of_two_dividing(group_size), MAX_SUB_STEP_K,
                8 * (1 << (rows.bit_length() - 1)))
    if sub_k < 8:
        return None
    use_dot = launch.use_dot and sub_k >= 8 * DOT_MIN_ROWS and dtype in _CODE_BIAS
    groups = max(1, min(launch.block_k // sub_k, MAX_SUB_STEPS))
    return use_dot, groups, sub_k // 8


def fits_int32(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               split_k: int) -> bool:
    m, n = x.shape[0], qweight.shape[1]
    return (qweight.numel() < INT32_SPAN and scales.numel() < INT32_SPAN
            and m * x.stride(0) + x.shape[1] < INT32_SPAN and split_k * m * n < INT32_SPAN)


def w4a16_decode(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                 scales: torch.Tensor, group_size: int, bias: torch.Tensor | None,
                 perm: torch.Tensor | None, launch: W4DecodeLaunch,
                 steps: tuple[bool, int, int]) -> torch.Tensor:
    """The launch. Arguments already checked by w4a16_gemm: M in 1..16, no g_idx, spans within
    int32 (fits_int32), `steps` from decode_steps."""
    (m, k), n = x.shape, qweight.shape[1]
    use_dot, groups, group_rows = steps
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    split_k = launch.split_k
    grid = (triton.cdiv(n, launch.block_n) * (1 if use_dot else m), split_k)
    part, arrivals = split_k_buffers(out, grid[0], split_k)
    args = (x, qweight, qzeros, scales, perm if perm is not None else qweight,
            bias if bias is not None else scales, out, part, arrivals, m, n, k, group_size,
            x.stride(0), qweight.stride(0), qzeros.stride(0), scales.stride(0), out.stride(0))
    flags = dict(BLOCK_N=launch.block_n, GROUPS=groups, GROUP_ROWS=group_rows, SPLIT_K=split_k,
                 PERMUTED=perm is not None, HAS_BIAS=bias is not None,
                 EVEN_N=n % launch.block_n == 0,
                 EVEN_K=(k // 8) % (groups * group_rows * split_k) == 0,
                 GROUP_LOG2=group_size.bit_length() - 1 if group_size & (group_size - 1) == 0 else -1,
                 num_warps=launch.num_warps, num_stages=launch.num_stages)
    if use_dot:
        code_bias, code_offset = _CODE_BIAS[x.dtype]
        _w4a16_decode_dot_kernel[grid](*args, CODE_BIAS=code_bias, CODE_OFFSET=code_offset,
                                       **flags)
    else:
        _w4a16_gemv_kernel[grid](*args, X_BF16=x.dtype == torch.bfloat16, **flags)
    return out
