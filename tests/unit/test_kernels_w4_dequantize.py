"""The W4A16 weight dequantized by its Triton kernel (kernels/w4_dequantize.py) under Triton's
interpreter: element for element the reference's weight, for groups that hold a whole tile,
groups smaller than a tile or not a power of two, act order through g_idx, and shapes that are
no multiple of a tile; and w4a16_gemm, from DEQUANT_MIN_ROWS rows on, taking that path to the
reference's product (sorted act order and bias included). fp16 and fp32 only: the interpreter's
bf16 arithmetic is wrong (test_kernels_int4.py)."""

from __future__ import annotations

import pytest
import torch

from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations
from tests.unit.test_kernels_int4 import random_int4

MODULES = ("kernels.w8a16_gemm", "kernels.split_k", "kernels.w4a16_decode",
           "kernels.w4_dequantize", "kernels.w4a16_gemm")


@pytest.fixture(scope="module")
def kernels():
    with interpreted(*MODULES) as (*_, dequantize, gemm):
        yield dequantize, gemm


@pytest.mark.parametrize("k,n,group_size,act_order", [
    (256, 136, 128, False),     # one group per tile of 128 channels; N past a tile
    (384, 64, 256, False),      # a group of two tiles
    (192, 40, 64, False),       # groups smaller than a tile; a partial tile of rows
    (120, 24, 40, False),       # group 40: not a power of two
    (160, 32, 32, True),        # act order: a shuffled g_idx
])
def test_dequantized_weight_is_the_reference_element_for_element(kernels, k, n, group_size,
                                                                 act_order):
    dequantize, gemm = kernels
    qweight, qzeros, scales = random_int4(k, n, group_size)
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k)].int()
    ref = gemm.dequantize_w4_ref(qweight, qzeros, scales, group_size, g_idx)     # fp32 scales
    with poisoned_allocations():
        for dtype in (torch.float32, torch.float16):
            out = dequantize.dequantize_w4(qweight, qzeros, scales.to(dtype), group_size, g_idx,
                                           dtype)
            expected = gemm.dequantize_w4_ref(qweight, qzeros, scales.to(dtype), group_size,
                                              g_idx).to(dtype)
            assert torch.equal(out, expected), dtype
            assert_close(out, ref.to(dtype), dtype)


@pytest.mark.parametrize("act_order,with_bias", [(None, True), ("perm", False), ("g_idx", True)])
def test_many_rows_take_the_dequantized_product(kernels, act_order, with_bias):
    dequantize, gemm = kernels
    m, k, n, group_size = dequantize.DEQUANT_MIN_ROWS, 256, 48, 128
    qweight, qzeros, scales = random_int4(k, n, group_size, seed=3)
    scales = scales.half()
    g_idx = perm = None
    if act_order == "g_idx":
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k)].int()
    elif act_order == "perm":
        perm = torch.randperm(k).int()
    x = torch.randn(m, k).half()
    bias = torch.randn(n).half() if with_bias else None
    calls = []
    original = gemm.dequantized_product
    gemm.dequantized_product = lambda *a: calls.append(1) or original(*a)
    try:
        out = gemm.w4a16_gemm(x, qweight, qzeros, scales, group_size, g_idx, bias, perm,
                              use_triton=True)
        fewer = gemm.w4a16_gemm(x[:-1].float(), qweight, qzeros, scales.float(), group_size,
                                g_idx, bias.float() if with_bias else None, perm,
                                use_triton=True)
    finally:
        gemm.dequantized_product = original
    assert calls == [1]             # M rows did, M - 1 rows did not
    ref = gemm.w4a16_gemm_ref(x.float(), qweight, qzeros, scales.float(), group_size, g_idx,
                              bias.float() if with_bias else None, perm)
    assert_close(out, ref.half(), torch.float16, scale=2.0)
    assert_close(fewer, ref[:-1])
