"""The W4A16 GEMM against its reference under Triton's interpreter: odd shapes, group sizes that
do and do not divide the K step (and K), act order through a shuffled g_idx, split-K, bias, and
an exact case on small integers. (bf16 is left to tests/gpu: the interpreter's bf16 arithmetic
is wrong for every GEMM here, INT8 ones included.)"""

from __future__ import annotations

import pytest
import torch

from kernels.gemm_launch import GemmLaunch
from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations

MODULES = ("kernels.w8a16_gemm", "kernels.w4a16_gemm")


@pytest.fixture(scope="module")
def w4a16():
    with interpreted(*MODULES) as (_, module):
        yield module


def random_int4(k: int, n: int, group_size: int, seed: int = 0):
    """Random words in the kernel's layout: any bit pattern is a valid set of codes."""
    gen = torch.Generator().manual_seed(seed)
    groups = -(-k // group_size)
    qweight = torch.randint(-2**31, 2**31, (k // 8, n), generator=gen, dtype=torch.int64).int()
    qzeros = torch.randint(-2**31, 2**31, (groups, n // 8), generator=gen, dtype=torch.int64).int()
    scales = torch.rand(groups, n, generator=gen) * 0.02 + 0.001
    return qweight, qzeros, scales


@pytest.mark.parametrize("dtype,m,k,n,group_size,act_order,split_k,with_bias", [
    (torch.float16, 1, 96, 40, 32, None, 1, False),      # aligned groups, N not a tile multiple
    (torch.float16, 5, 200, 72, 40, None, 2, True),      # group 40: not a power of two, split-K
    (torch.float16, 3, 136, 24, 64, "g_idx", 1, False),  # act order, partial last group
    (torch.float32, 17, 64, 16, 16, "g_idx", 3, True),   # two row tiles, more slices than steps
    (torch.float16, 2, 160, 32, 32, "perm", 2, False),   # act order as sorted rows + input perm
])
def test_w4a16_gemm_matches_reference(w4a16, dtype, m, k, n, group_size, act_order, split_k,
                                      with_bias):
    qweight, qzeros, scales = random_int4(k, n, group_size)
    g_idx = perm = None
    if act_order == "g_idx":
        g_idx = (torch.arange(k) // group_size)[torch.randperm(k)].int()
    elif act_order == "perm":
        perm = torch.randperm(k).int()
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype) if with_bias else None
    scales = scales.to(torch.float16)
    launch = GemmLaunch(16, 32, 32, split_k=split_k)
    with poisoned_allocations():
        out = w4a16.w4a16_gemm(x, qweight, qzeros, scales, group_size, g_idx, bias, perm,
                               use_triton=True, launch=launch)
    ref = w4a16.w4a16_gemm_ref(x, qweight, qzeros, scales, group_size, g_idx, bias, perm)
    assert_close(out, ref, dtype, scale=2.0)


def test_w4a16_gemm_is_exact_on_small_integers(w4a16):
    """Integer activations and power-of-two scales: every product and sum is exact in fp32."""
    m, k, n, group_size = 2, 48, 16, 16
    qweight, qzeros, _ = random_int4(k, n, group_size, seed=1)
    scales = torch.full((k // group_size, n), 0.25)
    x = torch.randint(-3, 4, (m, k)).float()
    with poisoned_allocations():
        out = w4a16.w4a16_gemm(x, qweight, qzeros, scales, group_size, use_triton=True,
                               launch=GemmLaunch(16, 16, 16))
    assert torch.equal(out, w4a16.w4a16_gemm_ref(x, qweight, qzeros, scales, group_size))


def test_w4a16_gemm_names_the_wrong_argument(w4a16):
    from kernels.arguments import KernelArgumentError
    qweight, qzeros, scales = random_int4(32, 16, 16)
    with pytest.raises(KernelArgumentError, match="scales"):
        w4a16.w4a16_gemm(torch.randn(1, 32), qweight, qzeros, scales[:1], 16)
    with pytest.raises(KernelArgumentError, match="g_idx"):
        w4a16.w4a16_gemm(torch.randn(1, 32), qweight, qzeros, scales, 16,
                         g_idx=torch.zeros(31, dtype=torch.int32))
    with pytest.raises(KernelArgumentError, match="perm"):
        w4a16.w4a16_gemm(torch.randn(1, 32), qweight, qzeros, scales, 16,
                         perm=torch.arange(32))                      # int64
