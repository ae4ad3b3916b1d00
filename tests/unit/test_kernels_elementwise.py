"""RMSNorm (+ residual), rotary embedding and SiLU-and-mul against their torch references, under
Triton's interpreter at small, odd shapes."""

from __future__ import annotations

import pytest
import torch

from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations

MODULES = ("kernels.rms_norm", "kernels.rotary", "kernels.silu_and_mul")


@pytest.fixture(scope="module")
def ops():
    with interpreted(*MODULES) as modules:
        yield modules


@pytest.mark.parametrize("dtype,with_residual", [(torch.float32, True), (torch.float16, True),
                                                 (torch.float16, False)])
def test_rms_norm_matches_reference(ops, dtype, with_residual):
    norm = ops[0]
    x = torch.randn(7, 99).to(dtype)
    weight = (1 + 0.1 * torch.randn(99)).to(dtype)
    residual = torch.randn(7, 99).to(dtype) if with_residual else None
    ref, ref_residual = norm.rms_norm_ref(x, weight, 1e-5, residual)
    with poisoned_allocations():
        out, new_residual = norm.rms_norm(x, weight, 1e-5, residual, use_triton=True)
    assert_close(out, ref)
    if with_residual:
        assert torch.equal(new_residual, ref_residual)
    else:
        assert new_residual is None


def test_rms_norm_reads_strided_rows(ops):
    norm = ops[0]
    x = torch.randn(5, 160)[:, 16:80]             # rows of 64 with a row stride of 160
    weight = torch.randn(64)
    with poisoned_allocations():
        out, _ = norm.rms_norm(x, weight, 1e-6, use_triton=True)
    assert_close(out, norm.rms_norm_ref(x, weight, 1e-6)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotary_matches_reference(ops, dtype):
    rotary = ops[1]
    num_tokens, num_heads, num_kv_heads, head_dim = 9, 6, 2, 24
    # q and k as slices of one fused qkv projection, the way the model produces them.
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim).to(dtype)
    q = qkv[:, :num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim)
    angles = torch.rand(50, head_dim // 2) * 6.3
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    positions = torch.randint(0, 50, (num_tokens,))
    ref_q, ref_k = rotary.rotary_ref(q, k, positions, cache)
    with poisoned_allocations():
        out_q, out_k = rotary.rotary(q, k, positions, cache, use_triton=True)
    assert_close(out_q, ref_q)
    assert_close(out_k, ref_k)


@pytest.mark.parametrize("dtype,num_tokens,intermediate", [(torch.float32, 3, 1500),
                                                           (torch.float16, 5, 37)])
def test_silu_and_mul_matches_reference(ops, dtype, num_tokens, intermediate):
    silu = ops[2]
    x = (2 * torch.randn(num_tokens, 2 * intermediate)).to(dtype)
    with poisoned_allocations():
        out = silu.silu_and_mul(x, use_triton=True)
    assert_close(out, silu.silu_and_mul_ref(x))


def test_elementwise_wrappers_reject_bad_arguments(ops):
    norm, rotary, silu = ops
    from kernels.arguments import KernelArgumentError
    with pytest.raises(KernelArgumentError, match="weight"):
        norm.rms_norm(torch.randn(2, 8), torch.randn(9), 1e-5)
    with pytest.raises(KernelArgumentError, match="even"):
        silu.silu_and_mul(torch.randn(2, 7))
    with pytest.raises(KernelArgumentError, match="cos_sin_cache"):
        rotary.rotary(torch.randn(2, 4, 8), torch.randn(2, 2, 8), torch.zeros(2, dtype=torch.int64),
                      torch.randn(10, 8).double())


def test_tensors_on_different_devices_are_named():
    import kernels

    q, k = torch.randn(3, 4, 8), torch.randn(3, 2, 8)
    cache = torch.empty(16, 8, device="meta")
    with pytest.raises(kernels.KernelArgumentError,
                       match=r"^q: tensors must share a device: q on cpu, k on cpu, "
                             r"positions on cpu, cos_sin_cache on meta$"):
        kernels.rotary(q, k, torch.arange(3), cache)
    with pytest.raises(kernels.KernelArgumentError, match="key_cache on meta"):
        kernels.write_kv_pages(k, k, torch.empty(4, 4, 2, 8, device="meta"),
                               torch.empty(4, 4, 2, 8), torch.arange(3))
