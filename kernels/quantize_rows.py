"""Symmetric per-row INT8 quantization: scale = max|row| / 127, code = round-half-away(x / scale).

The one rule behind every INT8 tensor in Tandem: weights per output channel (rows of [out, in],
done once by `tandem quantize`), activations per token (rows of [tokens, hidden], at run time
before a W8A8 GEMM), and K/V per token and head (kernels/kv_page_write.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import FLOAT_DTYPES, check_tensor, next_power_of_2, use_triton_for

SMALLEST_SCALE = torch.finfo(torch.float32).tiny    # an all-zero row quantizes to zeros, not NaN
_ONE_PASS_MAX = 16384     # rows up to this many columns are held in registers whole
_CHUNK = 4096


def quantize_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification, over the last dim. Returns (int8 codes like x, fp32 scales x.shape[:-1])."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1) / 127.0
    q = xf / scale.clamp_min(SMALLEST_SCALE)[..., None]
    q = torch.where(q >= 0, torch.floor(q + 0.5), torch.ceil(q - 0.5))
    return q.clamp(-127, 127).to(torch.int8), scale


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, cols, stride_x, stride_q,
                          CHUNK: tl.constexpr, ONE_PASS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    if ONE_PASS:
        # The whole row stays in registers: read once.
        mask = offs < cols
        x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.max(tl.abs(x), 0) / 127.0
        _store_codes(x, scale, q_ptr + row * stride_q + offs, mask)
    else:
        amax = tl.zeros([CHUNK], tl.float32)
        for c0 in range(0, cols, CHUNK):
            x = tl.load(x_ptr + row * stride_x + c0 + offs, mask=c0 + offs < cols, other=0.0)
            amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
        scale = tl.max(amax, 0) / 127.0
        for c0 in range(0, cols, CHUNK):
            mask = c0 + offs < cols
            x = tl.load(x_ptr + row * stride_x + c0 + offs, mask=mask, other=0.0).to(tl.float32)
            _store_codes(x, scale, q_ptr + row * stride_q + c0 + offs, mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _store_codes(x, scale, dst, mask):
    q = x / tl.maximum(scale, 1.1754943508222875e-38)
    q = tl.where(q >= 0, tl.floor(q + 0.5), tl.ceil(q - 0.5))
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(dst, q.to(tl.int8), mask=mask)


def quantize_rows(x: torch.Tensor, *, use_triton: bool | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [rows, cols] (rows may be strided). Returns (int8 [rows, cols], fp32 [rows])."""
    check_tensor("x", x, 2, FLOAT_DTYPES)
    if not use_triton_for(use_triton, x):
        return quantize_rows_ref(x)
    rows, cols = x.shape
    q = torch.empty((rows, cols), dtype=torch.int8, device=x.device)
    scale = torch.empty((rows,), dtype=torch.float32, device=x.device)
    if rows == 0 or cols == 0:
        return q, scale.zero_()
    one_pass = cols <= _ONE_PASS_MAX
    chunk = next_power_of_2(cols) if one_pass else _CHUNK
    _quantize_rows_kernel[(rows,)](x, q, scale, cols, x.stride(0), q.stride(0), CHUNK=chunk,
                                   ONE_PASS=one_pass, num_warps=max(4, min(16, chunk // 1024)))
    return q, scale
