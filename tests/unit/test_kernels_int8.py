"""INT8 ops against their references under Triton's interpreter: per-row quantization, W8A16 and
W8A8 GEMMs at odd shapes, small-integer inputs, and exact-equality cases."""

from __future__ import annotations

import pytest
import torch

from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations

MODULES = ("kernels.quantize_rows", "kernels.w8a16_gemm", "kernels.w8a8_gemm")


@pytest.fixture(scope="module")
def ops():
    with interpreted(*MODULES) as (quant, w8a16, w8a8):
        yield quant, w8a16, w8a8


def small_int_weights(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(-8, 9, (n, k), dtype=torch.int8), torch.rand(n) * 0.1 + 0.01


def test_quantize_rows_in_chunks_for_long_rows(ops):
    quant = ops[0]
    x = torch.randn(2, 17001)
    with poisoned_allocations():
        q, scale = quant.quantize_rows(x, use_triton=True)
    ref_q, ref_scale = quant.quantize_rows_ref(x)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)


def test_quantize_rows_matches_reference_exactly(ops):
    quant = ops[0]
    x = torch.randn(6, 37) * torch.rand(6, 1) * 10
    x[2] = 0.0                                               # all-zero row -> codes 0, scale 0
    x[4, 5] = -x[4].abs().max() * 2                          # the row's extreme is negative
    ref_q, ref_scale = quant.quantize_rows_ref(x)
    with poisoned_allocations():
        q, scale = quant.quantize_rows(x, use_triton=True)
    assert torch.equal(q, ref_q)
    assert torch.equal(scale, ref_scale)
    assert q[4, 5] == -127 and q[2].abs().max() == 0
    assert ((q.float() * scale[:, None]) - x).abs().max() <= (scale.max() / 2) * 1.0001


@pytest.mark.parametrize("dtype,m,split_k,with_bias", [
    (torch.float16, 1, 1, False), (torch.float16, 5, 2, True), (torch.float32, 33, 1, True),
])
def test_w8a16_gemm_matches_reference(ops, dtype, m, split_k, with_bias):
    _, w8a16, _ = ops
    from kernels.gemm_launch import GemmLaunch
    n, k = 40, 72                                  # neither a multiple of the tile
    weight, scale = small_int_weights(n, k)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype) if with_bias else None
    launch = GemmLaunch(16, 32, 32, split_k=split_k)
    with poisoned_allocations():
        out = w8a16.w8a16_gemm(x, weight, scale, bias, use_triton=True, launch=launch)
    assert_close(out, w8a16.w8a16_gemm_ref(x, weight, scale, bias))


@pytest.mark.parametrize("swap_ab", [False, True])
@pytest.mark.parametrize("m,n,k,split_k", [(3, 40, 72, 1), (17, 48, 128, 2), (1, 32, 64, 1)])
def test_w8a16_gemm_either_operand_order_with_and_without_k_masks(ops, swap_ab, m, n, k, split_k):
    """(72, split 1) takes the masked K loop, (128, split 2) and (64, split 1) the maskless one;
    both operand orders give the reference's result, bias added once whatever the split."""
    _, w8a16, _ = ops
    from kernels.gemm_launch import GemmLaunch
    weight, scale = small_int_weights(n, k)
    x = torch.randn(m, k).to(torch.float16)
    bias = torch.randn(n).to(torch.float16)
    launch = GemmLaunch(16, 16, 32, split_k=split_k, swap_ab=swap_ab)
    with poisoned_allocations():
        out = w8a16.w8a16_gemm(x, weight, scale, bias, use_triton=True, launch=launch)
    assert_close(out, w8a16.w8a16_gemm_ref(x, weight, scale, bias))


def test_w8a16_converts_every_int8_value_exactly(ops):
    _, w8a16, _ = ops
    from kernels.gemm_launch import GemmLaunch
    weight = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).view(16, 16)
    eye = torch.eye(16, dtype=torch.float16)
    with poisoned_allocations():
        out = w8a16.w8a16_gemm(eye, weight, torch.ones(16), use_triton=True,
                               launch=GemmLaunch(16, 16, 16))
    assert torch.equal(out, weight.t().half())      # row i of eye @ W^T is column i of W^T


def test_w8a16_gemm_is_exact_on_small_integers(ops):
    _, w8a16, _ = ops
    from kernels.gemm_launch import GemmLaunch
    weight = torch.randint(-5, 6, (24, 50), dtype=torch.int8)
    scale = torch.full((24,), 0.5)
    x = torch.randint(-4, 5, (3, 50)).float()
    with poisoned_allocations():
        out = w8a16.w8a16_gemm(x, weight, scale, use_triton=True, launch=GemmLaunch(16, 16, 16))
    assert torch.equal(out, (x @ weight.float().t()) * 0.5)


@pytest.mark.parametrize("dtype,m,with_bias,split_k", [(torch.float16, 3, False, 1),
                                                       (torch.float32, 21, True, 1),
                                                       (torch.float16, 9, True, 2)])
def test_w8a8_gemm_matches_reference(ops, dtype, m, with_bias, split_k):
    _, _, w8a8 = ops
    from kernels.gemm_launch import GemmLaunch
    n, k = 40, 72
    weight, scale = small_int_weights(n, k)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype) if with_bias else None
    with poisoned_allocations():
        out = w8a8.w8a8_gemm(x, weight, scale, bias, use_triton=True,
                             launch=GemmLaunch(16, 32, 32, split_k=split_k))
    ref = w8a8.w8a8_gemm_ref(x, weight, scale, bias)
    assert_close(out, ref)
    # Quantizing the activations costs at most about 1% against the unquantized product.
    exact = (x.float() @ weight.float().t()) * scale + (bias.float() if with_bias else 0)
    assert_close(out.float(), exact, torch.float16, scale=5.0)


def test_w8a8_gemm_is_exact_on_small_integers(ops):
    _, _, w8a8 = ops
    from kernels.gemm_launch import GemmLaunch
    # Each row holds 127 or -127, so its scale is exactly 1 and the codes are the values.
    x = torch.randint(-6, 7, (5, 64)).float()
    x[:, 7] = torch.tensor([127.0, -127.0, 127.0, 127.0, -127.0])
    weight = torch.randint(-7, 8, (33, 64), dtype=torch.int8)
    scale = torch.full((33,), 0.25)
    with poisoned_allocations():
        out = w8a8.w8a8_gemm(x, weight, scale, use_triton=True, launch=GemmLaunch(16, 16, 32))
    assert torch.equal(out, (x @ weight.float().t()) * 0.25)


def test_int8_gemms_reject_bad_arguments(ops):
    _, w8a16, w8a8 = ops
    from kernels.arguments import KernelArgumentError
    weight, scale = small_int_weights(8, 16)
    with pytest.raises(KernelArgumentError, match="weight"):
        w8a16.w8a16_gemm(torch.randn(2, 15), weight, scale)
    with pytest.raises(KernelArgumentError, match="weight_scale"):
        w8a8.w8a8_gemm(torch.randn(2, 16), weight, scale.half())
    with pytest.raises(KernelArgumentError, match="weight"):
        w8a16.w8a16_gemm(torch.randn(2, 16), weight.float(), scale)
