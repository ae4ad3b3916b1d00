"""The W4A16 kernels against their reference on the GPU at the Llama-3.1-8B projections (qkv, o,
gate|up, down; group 128, bf16), with and without act order, at decode and prefill row counts;
the decode kernels (FMA, tensor cores, split-K) at explicit launches, exactly on small integers
and inside a CUDA graph; and 4-bit tiny checkpoints served in bf16 through the kernel. Run on
the device machine: `pytest -m gpu tests/gpu/test_kernels_int4_gpu.py`."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.gemm_launch import W4DecodeLaunch
from kernels.split_k import ARRIVALS
from kernels.w4_dequantize import dequantize_w4
from kernels.w4a16_gemm import dequantize_w4_ref, w4a16_gemm_ref
from tests.unit.kernel_interpreter import poisoned_allocations

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HIDDEN, INTERMEDIATE, GROUP = 4096, 14336, 128
BF16 = torch.bfloat16
SHAPES = [(6144, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    assert not torch.isnan(out).any(), "NaN in the output: an element was not written"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def int4_weight(n: int, k: int, act_order: bool, group: int = GROUP):
    """Random words (any bits are codes), fp16 scales, and with act order a shuffled g_idx."""
    groups = -(-k // group)
    qweight = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(-2**31, 2**31 - 1, (groups, n // 8), dtype=torch.int32, device="cuda")
    scales = (torch.rand(groups, n, device="cuda") * 1e-2 + 1e-3).half()
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k, device="cuda") // group)[torch.randperm(k, device="cuda")].int()
    return qweight, qzeros, scales, g_idx


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 7, 16, 17, 300])
@pytest.mark.parametrize("act_order", [None, "g_idx", "perm"])
def test_w4a16_gemm_at_8b_shapes(m, n, k, act_order):
    """Act order both ways the kernel takes it: groups gathered by g_idx, or rows sorted by
    group with the input channels gathered by perm (what Int4Linear loads desc_act into).
    From 17 rows on, the dequantized weight and cuBLAS."""
    qweight, qzeros, scales, g_idx = int4_weight(n, k, act_order == "g_idx")
    perm = torch.randperm(k, device="cuda").int() if act_order == "perm" else None
    x = torch.randn(m, k, dtype=BF16, device="cuda")
    with poisoned_allocations():
        out = kernels.w4a16_gemm(x, qweight, qzeros, scales, GROUP, g_idx, perm=perm)
    ref = w4a16_gemm_ref(x, qweight, qzeros, scales, GROUP, g_idx, perm=perm)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("group", [32, 40, 128])
def test_w4a16_gemm_odd_shapes_and_bias(group):
    m, n, k = 5, 328, 1000
    qweight, qzeros, scales, _ = int4_weight(n, k, False, group)
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    bias = torch.randn(n, dtype=torch.float16, device="cuda")
    with poisoned_allocations():
        out = kernels.w4a16_gemm(x, qweight, qzeros, scales, group, None, bias)
    assert rel_err(out, w4a16_gemm_ref(x, qweight, qzeros, scales, group, None, bias)) < 1e-2


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("act_order", [False, True])
def test_w4_dequantize_is_the_reference_in_bf16(n, k, act_order):
    qweight, qzeros, scales, g_idx = int4_weight(n, k, act_order)
    with poisoned_allocations():
        out = dequantize_w4(qweight, qzeros, scales, GROUP, g_idx, BF16)
    assert torch.equal(out, dequantize_w4_ref(qweight, qzeros, scales, GROUP, g_idx).to(BF16))


def test_w4a16_gemm_exact_on_small_integers():
    n, k = 4096, 1024
    qweight, qzeros, _, _ = int4_weight(n, k, False)
    scales = torch.ones(k // GROUP, n, dtype=torch.float16, device="cuda")
    x = torch.randint(-3, 4, (16, k), device="cuda").to(BF16)
    exact = w4a16_gemm_ref(x.float(), qweight, qzeros, scales, GROUP).to(BF16)
    assert torch.equal(kernels.w4a16_gemm(x, qweight, qzeros, scales, GROUP), exact)


DECODE_LAUNCHES = [W4DecodeLaunch(64, 256, 1, 2), W4DecodeLaunch(32, 512, 8, 1),
                   W4DecodeLaunch(128, 512, 4, 4), W4DecodeLaunch(128, 256, 1, 2, use_dot=True),
                   W4DecodeLaunch(128, 256, 4, 4, use_dot=True),
                   W4DecodeLaunch(256, 256, 2, 8, use_dot=True)]


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("launch", DECODE_LAUNCHES, ids=repr)
def test_w4a16_decode_launches_at_8b_shapes(m, n, k, launch):
    qweight, qzeros, scales, _ = int4_weight(n, k, False)
    x = torch.randn(m, k, dtype=BF16, device="cuda")
    with poisoned_allocations():
        out = kernels.w4a16_gemm(x, qweight, qzeros, scales, GROUP, launch=launch)
    assert rel_err(out, w4a16_gemm_ref(x, qweight, qzeros, scales, GROUP)) < 1e-2
    assert int(ARRIVALS.get(x.device, 1).abs().sum()) == 0


@pytest.mark.parametrize("group", [40, 128, 1000])
@pytest.mark.parametrize("launch", DECODE_LAUNCHES[1::2], ids=repr)
def test_w4a16_decode_odd_shapes_bias_and_perm(group, launch):
    """fp16, N and K not tile multiples, bias, sorted act order, strided rows."""
    m, n, k = 5, 328, 1000
    qweight, qzeros, scales, _ = int4_weight(n, k, False, group)
    x = torch.randn(m, k + 64, dtype=torch.float16, device="cuda")[:, 32:32 + k]
    bias = torch.randn(n, dtype=torch.float16, device="cuda")
    perm = torch.randperm(k, device="cuda").int()
    with poisoned_allocations():
        out = kernels.w4a16_gemm(x, qweight, qzeros, scales, group, None, bias, perm,
                                 launch=launch)
    ref = w4a16_gemm_ref(x, qweight, qzeros, scales, group, None, bias, perm)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("dtype", [BF16, torch.float16])
@pytest.mark.parametrize("launch", DECODE_LAUNCHES, ids=repr)
def test_w4a16_decode_exact_on_small_integers(dtype, launch):
    """Integer activations and unit scales: the sums are exact in fp32 in both kernels and
    across split-K slices, so the output is the exact value rounded once."""
    n, k = 4096, 1024
    qweight, qzeros, _, _ = int4_weight(n, k, False)
    scales = torch.ones(k // GROUP, n, dtype=torch.float16, device="cuda")
    x = torch.randint(-3, 4, (16, k), device="cuda").to(dtype)
    exact = w4a16_gemm_ref(x.double(), qweight, qzeros, scales.double(), GROUP).to(dtype)
    for m in (1, 4, 16):
        out = kernels.w4a16_gemm(x[:m], qweight, qzeros, scales, GROUP, launch=launch)
        assert torch.equal(out, exact[:m])


def test_w4a16_decode_split_k_in_a_cuda_graph():
    """Split-K's counters survive capture and replay: every replay gives the eager output."""
    n, k = 4096, 4096
    qweight, qzeros, scales, _ = int4_weight(n, k, False)
    x = torch.randn(1, k, dtype=BF16, device="cuda")
    outs = {}
    for launch in (W4DecodeLaunch(64, 256, 8, 2), W4DecodeLaunch(128, 256, 4, 2, use_dot=True)):
        eager = kernels.w4a16_gemm(x, qweight, qzeros, scales, GROUP, launch=launch)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs[launch] = kernels.w4a16_gemm(x, qweight, qzeros, scales, GROUP, launch=launch)
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(outs[launch], eager)


@pytest.mark.parametrize("scheme,group", [("gptq-w4a16", 32), ("awq-w4a16", 8)])
def test_int4_tiny_checkpoint_on_gpu(tmp_path, scheme, group):
    """A 4-bit checkpoint served in bf16 on the GPU (the Triton kernel) gives the logits the
    CPU reference path gives for the same checkpoint."""
    from orchestration.commands.quantize import write_quantized_checkpoint
    from services.engine.loader import load_model
    from tests.helpers.paged_batch import PagedHarness, PagedSequence

    out = write_quantized_checkpoint("tiny-random", tmp_path / scheme, scheme, group_size=group)
    prompt = list(range(3, 90, 3))
    logits = {}
    for device, dtype in (("cuda", "bfloat16"), ("cpu", "float32")):
        loaded = load_model(str(out), dtype=dtype, device=device)
        harness = PagedHarness(loaded.model, loaded.config, block_size=16)
        logits[device] = harness.step([(PagedSequence(prompt), len(prompt))]).float().cpu()
    assert rel_err(logits["cuda"], logits["cpu"]) < 0.03
