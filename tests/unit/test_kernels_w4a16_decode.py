"""The W4A16 decode kernels (M <= 16) against the reference under Triton's interpreter: both
kernels (FMA and tensor cores), odd N and K, group sizes 8, 40, 128 and whole-K, split-K with
uneven slices, sorted act order through a permutation, bias, strided rows, fp16/fp32/bf16
activations, exact cases on small integers, and the split-K counters left at zero. (bf16 runs
only through the FMA kernel here: the interpreter's bf16 tl.dot is wrong, see test_kernels_int4.)"""

from __future__ import annotations

import pytest
import torch

from kernels.arguments import KernelArgumentError
from kernels.gemm_launch import W4DecodeLaunch, w4_decode_launch
from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations
from tests.unit.test_kernels_int4 import random_int4

MODULES = ("kernels.w8a16_gemm", "kernels.split_k", "kernels.w4a16_decode", "kernels.w4a16_gemm")


@pytest.fixture(scope="module")
def ops():
    with interpreted(*MODULES) as (_, split_k, decode, gemm):
        yield decode, gemm, split_k


FMA, DOT = False, True


@pytest.mark.parametrize("dtype,m,k,n,group_size,launch,extra", [
    # FMA: N not a tile multiple, four 16-row sub-steps of one group each
    (torch.float16, 1, 256, 40, 128, W4DecodeLaunch(16, 512), ""),
    # group 40: 1-row sub-steps; K = 25 packed rows; two slices
    (torch.float32, 3, 200, 24, 40, W4DecodeLaunch(8, 64, split_k=2), "bias"),
    # group 8, three slices over 17 rows, the last one short
    (torch.float16, 2, 136, 16, 8, W4DecodeLaunch(16, 32, split_k=3), "strided"),
    # bf16 activations: the exponent-shift conversion
    (torch.bfloat16, 2, 256, 64, 64, W4DecodeLaunch(32, 128), "bias"),
    # tensor cores: N not a tile multiple, bias
    (torch.float16, 5, 512, 48, 128, W4DecodeLaunch(32, 256, use_dot=DOT), "bias"),
    # tensor cores, K = 80 packed rows (a partial step), split-K, sorted act order
    (torch.float16, 16, 640, 72, 128, W4DecodeLaunch(32, 256, split_k=2, use_dot=DOT), "perm"),
    # one group over all of K (384: 128-channel sub-steps), strided rows
    (torch.float16, 7, 384, 32, 384, W4DecodeLaunch(16, 256, use_dot=DOT), "strided"),
    # fp32 cannot go to the tensor cores: the same launch runs as FMA
    (torch.float32, 4, 256, 16, 128, W4DecodeLaunch(16, 128, split_k=2, use_dot=DOT), "perm"),
])
def test_decode_kernels_match_reference(ops, dtype, m, k, n, group_size, launch, extra):
    decode, gemm, _ = ops
    qweight, qzeros, scales = random_int4(k, n, group_size)
    scales = scales.to(torch.float16)
    x = torch.randn(m, k).to(dtype)
    if extra == "strided":
        x = torch.randn(m, k + 24).to(dtype)[:, 8:8 + k]
    bias = torch.randn(n).to(dtype) if extra == "bias" else None
    perm = torch.randperm(k).int() if extra == "perm" else None
    assert decode.decode_steps(launch, group_size, dtype) is not None
    with poisoned_allocations():
        out = gemm.w4a16_gemm(x, qweight, qzeros, scales, group_size, None, bias, perm,
                              use_triton=True, launch=launch)
    ref = gemm.w4a16_gemm_ref(x.float(), qweight, qzeros, scales, group_size, None,
                              None if bias is None else bias.float(), perm)
    assert_close(out, ref.to(dtype), dtype, scale=2.0)


@pytest.mark.parametrize("dtype,use_dot", [(torch.float32, FMA), (torch.bfloat16, FMA),
                                           (torch.float16, DOT)])
def test_decode_kernels_exact_on_small_integers(ops, dtype, use_dot):
    """Integer activations (zeros among them) and power-of-two scales: every product and sum
    is exact in fp32, through the denormal codes (FMA) and the 1024 + c codes (tensor cores),
    so the output equals the reference's rounding of the exact value. For bf16 the activations
    are sparse enough that the exact outputs are bf16 numbers (the interpreter's fp32 -> bf16
    cast truncates where the GPU rounds)."""
    decode, gemm, _ = ops
    m, k, n, group_size = 3, 256, 32, 128
    qweight, qzeros, _ = random_int4(k, n, group_size, seed=1)
    scales = torch.full((k // group_size, n), 0.25, dtype=torch.float16)
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (m, k), generator=gen)
    if dtype == torch.bfloat16:
        x = x * (torch.rand(m, k, generator=gen) < 0.1)
    x = x.to(dtype)
    launch = W4DecodeLaunch(16, 256, split_k=2, use_dot=use_dot)
    with poisoned_allocations():
        out = gemm.w4a16_gemm(x, qweight, qzeros, scales, group_size, use_triton=True,
                              launch=launch)
    exact = gemm.w4a16_gemm_ref(x.double(), qweight, qzeros, scales.double(), group_size)
    if dtype == torch.bfloat16:
        assert torch.equal(exact.to(dtype).double(), exact)
    assert torch.equal(out, exact.to(dtype))
    assert torch.equal(gemm.w4a16_gemm(torch.zeros(1, k, dtype=dtype), qweight, qzeros,
                                       scales, group_size, use_triton=True, launch=launch),
                       torch.zeros(1, n, dtype=dtype))


def test_split_k_counters_are_left_at_zero(ops):
    """The last slice of each tile resets its arrival counter, so the next launch (here the
    same one again) starts from zero and gives the same output."""
    _, gemm, split_k = ops
    qweight, qzeros, scales = random_int4(512, 48, 128, seed=2)
    x = torch.randn(2, 512)
    launch = W4DecodeLaunch(16, 128, split_k=4)
    first = gemm.w4a16_gemm(x, qweight, qzeros, scales, 128, use_triton=True, launch=launch)
    counters = split_k.ARRIVALS.get(x.device, 1)
    assert int(counters.abs().sum()) == 0
    again = gemm.w4a16_gemm(x, qweight, qzeros, scales, 128, use_triton=True, launch=launch)
    assert torch.equal(first, again)
    assert int(counters.abs().sum()) == 0


def test_decode_steps_choose_sub_steps_inside_groups(ops):
    decode, _, _ = ops
    fma, dot = W4DecodeLaunch(32, 512), W4DecodeLaunch(32, 512, use_dot=True)
    assert decode.decode_steps(fma, 128, torch.bfloat16) == (False, 4, 16)
    assert decode.decode_steps(dot, 128, torch.bfloat16) == (True, 4, 16)
    assert decode.decode_steps(dot, 4096, torch.float16) == (True, 2, 32)
    assert decode.decode_steps(dot, 64, torch.float16) == (False, 8, 8)    # < 16 rows: FMA
    assert decode.decode_steps(dot, 128, torch.float32) == (False, 4, 16)
    assert decode.decode_steps(fma, 40, torch.float16) == (False, 8, 1)
    assert decode.decode_steps(fma, 4, torch.float16) is None               # no 8-channel step


def test_decode_launch_rule_and_checks():
    assert w4_decode_launch(17, 4096, 4096) is None
    one, many = w4_decode_launch(1, 4096, 4096), w4_decode_launch(16, 4096, 4096)
    assert not one.use_dot and many.use_dot
    assert one.split_k > 1 and w4_decode_launch(1, 28672, 4096).split_k < one.split_k
    assert w4_decode_launch(1, 64, 256).split_k == 1            # no slice shorter than 2 steps
    with pytest.raises(KernelArgumentError, match="block_n"):
        W4DecodeLaunch(24, 128)
    with pytest.raises(KernelArgumentError, match="split_k"):
        W4DecodeLaunch(32, 128, split_k=0)
