"""SiLU-and-mul: the gated activation of the Llama MLP, on the fused gate|up projection.
Elementwise and bandwidth-bound: reads 2 x intermediate, writes intermediate, once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.arguments import FLOAT_DTYPES, KernelArgumentError, check_tensor, use_triton_for

_BLOCK = 1024


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """The specification. x: [num_tokens, 2 * intermediate] = gate | up."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, intermediate, stride_x, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + intermediate + cols, mask=mask, other=0.0).to(tl.float32)
    silu = gate / (1.0 + tl.exp(-gate))
    tl.store(out_ptr + row * stride_o + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, *, use_triton: bool | None = None) -> torch.Tensor:
    """x: [num_tokens, 2 * intermediate] (rows may be strided). Returns [num_tokens, intermediate]."""
    check_tensor("x", x, 2, FLOAT_DTYPES)
    if x.shape[1] % 2:
        raise KernelArgumentError("x", f"last dimension must be even (gate | up), got {x.shape[1]}")
    if not use_triton_for(use_triton, x):
        return silu_and_mul_ref(x)
    num_tokens, intermediate = x.shape[0], x.shape[1] // 2
    out = torch.empty((num_tokens, intermediate), dtype=x.dtype, device=x.device)
    if num_tokens == 0 or intermediate == 0:
        return out
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(intermediate, _BLOCK))](
        x, out, intermediate, x.stride(0), out.stride(0), BLOCK=_BLOCK, num_warps=4)
    return out
