"""The one-row GEMV under Triton's interpreter: odd shapes (masked tiles), split K meeting in
one launch with its counters left at zero, bias, and the arguments it refuses."""

from __future__ import annotations

import pytest
import torch

from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations


@pytest.fixture(scope="module")
def ops():
    with interpreted("kernels.split_k", "kernels.gemv") as (split_k, gemv):
        yield split_k, gemv


@pytest.mark.parametrize("n,k,block_n,block_k,split_k,bias", [
    (37, 100, 16, 32, 1, False),     # masked along N and K
    (37, 100, 16, 32, 3, True),      # split K, the last slice short
    (64, 256, 16, 32, 2, False),     # even: no masks
    (48, 512, 8, 64, 4, True),
])
def test_gemv_matches_reference(ops, n, k, block_n, block_k, split_k, bias):
    split, gemv = ops
    x = torch.randn(1, k, dtype=torch.float16)
    weight = (0.1 * torch.randn(n, k)).to(torch.float16)
    b = torch.randn(n, dtype=torch.float16) if bias else None
    launch = gemv.GemvLaunch(block_n, block_k, split_k)
    with poisoned_allocations():
        out = gemv.gemv(x, weight, b, launch=launch, use_triton=True)
    assert out.shape == (1, n)
    assert_close(out, gemv.gemv_ref(x, weight, b))
    assert int(split.ARRIVALS.get(x.device, 1).abs().sum()) == 0
    again = gemv.gemv(x, weight, b, launch=launch, use_triton=True)
    assert torch.equal(out, again)


@pytest.mark.parametrize("n,k,split_k", [(37, 100, 3), (64, 256, 2)])
def test_gemv_of_an_int8_weight_matches_reference(ops, n, k, split_k):
    _, gemv = ops
    from kernels.w8a16_gemm import w8a16_gemm_ref
    x = torch.randn(1, k, dtype=torch.bfloat16)
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n) / 127
    bias = torch.randn(n, dtype=torch.bfloat16)
    with poisoned_allocations():
        out = gemv.gemv(x, weight, bias, scale, launch=gemv.GemvLaunch(16, 32, split_k),
                        use_triton=True)
    assert_close(out, w8a16_gemm_ref(x, weight, scale, bias))
    assert_close(gemv.gemv_ref(x, weight, bias, scale), w8a16_gemm_ref(x, weight, scale, bias))


def test_gemv_refuses_what_it_does_not_take(ops):
    _, gemv = ops
    from kernels.arguments import KernelArgumentError
    launch = gemv.GemvLaunch(16, 32)
    weight = torch.randn(8, 32, dtype=torch.float16)
    with pytest.raises(KernelArgumentError, match="^x: dimension 0 must be 1"):
        gemv.gemv(torch.randn(2, 32, dtype=torch.float16), weight, launch=launch)
    with pytest.raises(KernelArgumentError, match="^weight: dimension 1 must be 32"):
        gemv.gemv(torch.randn(1, 32, dtype=torch.float16), weight[:, :16], launch=launch)
    with pytest.raises(KernelArgumentError, match="^x: dtype"):
        gemv.gemv(torch.randn(1, 32), weight.float(), launch=launch)
    with pytest.raises(KernelArgumentError, match="^weight_scale: an int8 weight needs"):
        gemv.gemv(torch.randn(1, 32, dtype=torch.float16), weight.to(torch.int8), launch=launch)
    with pytest.raises(KernelArgumentError, match="^launch.block_k"):
        gemv.GemvLaunch(16, 48)


def test_only_shapes_measured_faster_take_the_gemv():
    from kernels.gemv import GEMV_LAUNCHES, W8_GEMV_LAUNCHES, gemv_launch
    bf16 = torch.bfloat16
    assert gemv_launch(7, 9, bf16) is None and gemv_launch(7, 9, bf16, int8=True) is None
    assert GEMV_LAUNCHES and W8_GEMV_LAUNCHES
    for (n, k), launch in GEMV_LAUNCHES.items():
        assert gemv_launch(n, k, bf16) == launch
        assert gemv_launch(n, k, torch.float32) is None      # fp32 stays with cuBLAS
    for (n, k), launch in W8_GEMV_LAUNCHES.items():
        assert gemv_launch(n, k, bf16, int8=True) == launch
