"""GEMV: one activation row times a weight, y = x W^T (+ b), for the batch-1 decode: a bf16 /
fp16 weight, or an int8 one with a scale per output channel (W8A16: y = x (W * scale)^T + b).

At one row a projection is a weight stream: the time is the weight's bytes at the card's copy
rate, plus whatever the launch leaves idle. cuBLAS streams the large projections at the copy
rate, but for the smaller ones of an 8B model (q|k|v, o at 34-50 MB) its tiles leave SMs idle
and its split-K adds a reduction kernel (benchmarks/RESULTS.md, the batch-1 profile). Here
a program owns block_n output columns and one of split_k slices of K, so a launch can be cut
into about as many equal programs as the SMs hold, and the slices meet in the same launch
(split_k.py).

Each K step loads a [block_n, block_k] tile of W (rows contiguous along K: 16-byte loads) and the
matching x, multiplies in fp32 and keeps the products per column and lane, summed over K once after
the loop (an int8 weight's scale, constant along K, multiplies that sum). Triton does not pipeline
these loads, so bytes in flight come from the tile's size and the programs per SM, which is what
the launch sets.

Which shapes take this kernel is data: GEMV_LAUNCHES lists the (N, K) whose sweep on the card
(`benchmarks/kernels.py --only gemv --sweep gemv`) found it faster than cuBLAS, and
W8_GEMV_LAUNCHES those where it beat our W8A16 GEMM (w8a16_gemm.py) at one row."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.arguments import (KernelArgumentError, check_dim, check_same_device, check_tensor,
                               use_triton_for)
from kernels.split_k import finish_tile, split_k_buffers

GEMV_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class GemvLaunch:
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k"):
            size = getattr(self, name)
            if size < 1 or size & (size - 1):
                raise KernelArgumentError(f"launch.{name}",
                                          f"must be a power of two, got {size}")
        if self.split_k < 1:
            raise KernelArgumentError("launch.split_k", f"must be >= 1, got {self.split_k}")


# (N, K) -> launch, for the shapes where the GEMV beat cuBLAS at one row; the rest stay with
# cuBLAS. Swept on an H200, 2026-12-04 (bf16, four rotating weights, replayed): Llama-3.1-8B's
# q|k|v, o, gate|up, down and LM head, the GEMV's time against cuBLAS's in the comment.
GEMV_LAUNCHES: dict[tuple[int, int], GemvLaunch] = {
    (6144, 4096): GemvLaunch(8, 512, 1, num_warps=4),        # 15.0 us, cuBLAS 16.2
    (4096, 4096): GemvLaunch(8, 1024, 1, num_warps=4),       # 11.0 us, cuBLAS 13.5 (split-K)
    (28672, 4096): GemvLaunch(16, 256, 1, num_warps=4),      # 55.6 us, cuBLAS 56.9
    (4096, 14336): GemvLaunch(8, 1024, 1, num_warps=4),      # 29.2 us, cuBLAS 32.2 (split-K)
    (128256, 4096): GemvLaunch(16, 256, 1, num_warps=4),     # 236.2 us, cuBLAS 248.2
}


# The same for int8 weights, against w8a16_gemm at one row (same card and day): the GEMV wins
# the two smaller projections; at gate|up (41.3 vs 33.5 us) and down (23.7 vs 21.7) it loses.
W8_GEMV_LAUNCHES: dict[tuple[int, int], GemvLaunch] = {
    (6144, 4096): GemvLaunch(8, 512, 1, num_warps=2),        # 12.6 us, W8A16 GEMM 13.1
    (4096, 4096): GemvLaunch(4, 2048, 1, num_warps=4),       # 9.5 us, W8A16 GEMM 10.1
}


def gemv_launch(n: int, k: int, x_dtype: torch.dtype, int8: bool = False) -> GemvLaunch | None:
    """The launch of a shape the GEMV serves best for activations of x_dtype, else None (the
    GEMM does: other shapes, and fp32 activations, which the GEMV does not take)."""
    if x_dtype not in GEMV_DTYPES:
        return None
    return (W8_GEMV_LAUNCHES if int8 else GEMV_LAUNCHES).get((n, k))


def gemv_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             weight_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The specification. x: [1, K]; weight: [N, K] (int8 with weight_scale fp32 [N]); bias:
    [N] or None. Returns [1, N]."""
    out = x.float() @ weight.float().t()
    if weight_scale is not None:
        out = out * weight_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, part_ptr, arrival_ptr, N, K,
                 stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, EVEN: tl.constexpr, SCALED: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = tl.program_id(1) * span
    k_end = tl.minimum(K, k_start + span)
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_wn
    lanes = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        rk = k0 + lanes
        if EVEN:
            x = tl.load(x_ptr + rk)
            w = tl.load(w_rows + rk[None, :])
        else:
            k_mask = rk < k_end
            x = tl.load(x_ptr + rk, mask=k_mask, other=0.0)
            w = tl.load(w_rows + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    total = tl.sum(acc, axis=1)
    if SCALED:
        total *= tl.load(scale_ptr + rn, mask=n_mask, other=0.0)
    finish_tile(total, out_ptr, rn, part_ptr, rn, arrival_ptr, bias_ptr, rn, n_mask, 1, N,
                HAS_BIAS, SPLIT_K)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         weight_scale: torch.Tensor | None = None, *, launch: GemvLaunch,
         use_triton: bool | None = None) -> torch.Tensor:
    """x: [1, K] (K contiguous); weight: [N, K] row-major, x's dtype (fp16 / bf16), or int8
    with weight_scale fp32 [N]; bias [N]. Returns [1, N] in x's dtype."""
    check_tensor("x", x, 2, GEMV_DTYPES)
    check_dim("x", x, 0, 1)
    check_tensor("weight", weight, 2, (x.dtype, torch.int8))
    check_dim("weight", weight, 1, x.shape[1])
    n = weight.shape[0]
    if (weight.dtype == torch.int8) != (weight_scale is not None):
        raise KernelArgumentError("weight_scale", "an int8 weight needs its fp32 scales, and "
                                                  "only an int8 weight takes them")
    if weight_scale is not None:
        check_tensor("weight_scale", weight_scale, 1, (torch.float32,))
        check_dim("weight_scale", weight_scale, 0, n)
    if bias is not None:
        check_tensor("bias", bias, 1, (x.dtype,))
        check_dim("bias", bias, 0, n)
    check_same_device(x=x, weight=weight, weight_scale=weight_scale, bias=bias)
    if not use_triton_for(use_triton, x):
        return gemv_ref(x, weight, bias, weight_scale)
    k = weight.shape[1]
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    tiles = triton.cdiv(n, launch.block_n)
    part, arrivals = split_k_buffers(out, tiles, launch.split_k)
    even = n % launch.block_n == 0 and k % (launch.block_k * launch.split_k) == 0
    _gemv_kernel[(tiles, launch.split_k)](
        x, weight, weight_scale if weight_scale is not None else out,
        bias if bias is not None else out, out, part, arrivals, n, k, weight.stride(0),
        BLOCK_N=launch.block_n, BLOCK_K=launch.block_k, SPLIT_K=launch.split_k,
        HAS_BIAS=bias is not None, EVEN=even, SCALED=weight_scale is not None,
        num_warps=launch.num_warps)
    return out
