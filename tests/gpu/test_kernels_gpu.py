"""The kernels against their references on the GPU at Llama-3.1-8B shapes (32 query heads, 8 KV
heads, head dim 128, hidden 4096, intermediate 14336) in bf16. Run on the device machine:
`pytest -m gpu tests/gpu`."""

from __future__ import annotations

import math

import pytest
import torch

import kernels
from kernels.gemv import GemvLaunch, gemv_ref
from kernels.kv_page_write import write_kv_pages_ref
from kernels.paged_decode_attention import paged_decode_attention_ref
from kernels.prefill_attention import prefill_attention_ref
from kernels.quantize_rows import quantize_rows_ref
from kernels.rms_norm import rms_norm_ref
from kernels.rotary import rotary_ref
from kernels.silu_and_mul import silu_and_mul_ref
from kernels.split_k import ARRIVALS
from kernels.w8a8_gemm import w8a8_gemm_ref
from kernels.w8a16_gemm import w8a16_gemm_ref
from tests.unit.kernel_interpreter import poisoned_allocations

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def poison():
    """Outputs and workspaces the wrappers allocate start as NaN: unwritten elements fail."""
    with poisoned_allocations():
        yield

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE = 32, 8, 128, 4096, 14336
BF16 = torch.bfloat16


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    assert not torch.isnan(out).any(), "NaN in the output: an element was not written"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def paged_pool(num_blocks: int, block_size: int = 16, num_layers: int = 3):
    pool = torch.randn(num_blocks, num_layers, 2, block_size, KV_HEADS, HEAD_DIM,
                       dtype=BF16, device="cuda")
    return pool[:, 1, 0], pool[:, 1, 1]


def tables_for(seq_lens: list[int], num_blocks: int, block_size: int = 16) -> torch.Tensor:
    need = [-(-n // block_size) for n in seq_lens]
    perm = torch.randperm(num_blocks, device="cuda")[:sum(need)].int()
    tables = torch.zeros(len(seq_lens), max(need), dtype=torch.int32, device="cuda")
    start = 0
    for i, n in enumerate(need):
        tables[i, :n] = perm[start:start + n]
        start += n
    return tables


@pytest.mark.parametrize("seq_lens", [[1, 17, 33, 4096, 1000, 2049, 513, 77], [32768]])
def test_paged_decode_attention(seq_lens):
    key_cache, value_cache = paged_pool(sum(-(-n // 16) for n in seq_lens) + 8)
    tables = tables_for(seq_lens, key_cache.shape[0])
    q = torch.randn(len(seq_lens), HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    scale = 1 / math.sqrt(HEAD_DIM)
    out = kernels.paged_decode_attention(q, key_cache, value_cache, tables, lens, scale)
    ref = paged_decode_attention_ref(q, key_cache, value_cache, tables, lens, scale)
    assert rel_err(out, ref) < 1e-2


def test_prefill_attention_with_cached_prefixes():
    q_lens, seq_lens = [1000, 17, 513, 1], [1000, 2065, 813, 40]
    key_cache, value_cache = paged_pool(sum(-(-n // 16) for n in seq_lens) + 8)
    tables = tables_for(seq_lens, key_cache.shape[0])
    q = torch.randn(sum(q_lens), HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    starts = torch.tensor([0] + q_lens, device="cuda").cumsum(0).int()
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    out = kernels.prefill_attention(q, key_cache, value_cache, tables, starts, lens, 0.088)
    ref = prefill_attention_ref(q, key_cache, value_cache, tables, starts, lens, 0.088)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("cache_dtype", [BF16, torch.int8])
def test_kv_page_write(cache_dtype):
    num_blocks, tokens = 64, 700
    pool = torch.zeros(num_blocks, 2, 2, 16, KV_HEADS, HEAD_DIM, dtype=cache_dtype, device="cuda")
    scales = torch.zeros(num_blocks, 2, 2, 16, KV_HEADS, device="cuda") \
        if cache_dtype == torch.int8 else None
    key = torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    value = torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    slots = torch.randperm(num_blocks * 16, device="cuda")[:tokens]
    slots[5] = -1
    expected = pool.clone()
    expected_scales = scales.clone() if scales is not None else None
    views = lambda p, s: (p[:, 1, 0], p[:, 1, 1], *((s[:, 1, 0], s[:, 1, 1]) if s is not None else ()))
    write_kv_pages_ref(key, value, *views(expected, expected_scales)[:2], slots,
                       *views(expected, expected_scales)[2:])
    kernels.write_kv_pages(key, value, *views(pool, scales)[:2], slots, *views(pool, scales)[2:])
    if cache_dtype == torch.int8:
        # GPU division may round a code sitting on a .5 boundary the other way.
        assert (pool.int() - expected.int()).abs().max() <= 1
        assert torch.allclose(scales, expected_scales)
    else:
        assert torch.equal(pool, expected)


def test_rms_norm_rotary_silu():
    x = torch.randn(777, HIDDEN, dtype=BF16, device="cuda")
    residual = torch.randn_like(x)
    weight = (1 + 0.1 * torch.randn(HIDDEN, device="cuda")).to(BF16)
    out, new_residual = kernels.rms_norm(x, weight, 1e-5, residual)
    ref, ref_residual = rms_norm_ref(x, weight, 1e-5, residual)
    assert rel_err(out, ref) < 1e-2 and torch.equal(new_residual, ref_residual)

    qkv = torch.randn(333, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=BF16, device="cuda")
    q = qkv[:, :HEADS * HEAD_DIM].view(-1, HEADS, HEAD_DIM)
    k = qkv[:, HEADS * HEAD_DIM:(HEADS + KV_HEADS) * HEAD_DIM].view(-1, KV_HEADS, HEAD_DIM)
    angles = torch.rand(8192, HEAD_DIM // 2, device="cuda") * 100
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    positions = torch.randint(0, 8192, (333,), device="cuda")
    for out, ref in zip(kernels.rotary(q, k, positions, cache), rotary_ref(q, k, positions, cache)):
        assert rel_err(out, ref) < 1e-2

    gate_up = torch.randn(129, 2 * INTERMEDIATE, dtype=BF16, device="cuda")
    assert rel_err(kernels.silu_and_mul(gate_up), silu_and_mul_ref(gate_up)) < 1e-2


def test_rotary_kv_write_is_rotary_then_the_page_write():
    tokens, num_blocks = 333, 64
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=BF16, device="cuda")
    q, k, v = qkv.split((HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM), dim=-1)
    q, k, v = (t.view(tokens, -1, HEAD_DIM) for t in (q, k, v))
    angles = torch.rand(8192, HEAD_DIM // 2, device="cuda") * 100
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    pool = torch.randn(num_blocks, 2, 2, 16, KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    slots = torch.randperm(num_blocks * 16, device="cuda")[:tokens]
    slots[7] = -1
    expected_q, expected_k = rotary_ref(q, k, positions, cache)
    expected = pool.clone()
    write_kv_pages_ref(expected_k, v, expected[:, 1, 0], expected[:, 1, 1], slots)
    out = kernels.rotary_kv_write(q, k, v, positions, cache, pool[:, 1, 0], pool[:, 1, 1], slots)
    assert out is q and rel_err(q, expected_q) < 1e-2
    assert rel_err(pool, expected) < 1e-2
    assert torch.equal(pool[:, 0], expected[:, 0])


@pytest.mark.parametrize("n,k", [(6144, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, INTERMEDIATE)])
@pytest.mark.parametrize("launch", [GemvLaunch(16, 512, 1, 4), GemvLaunch(32, 256, 4, 8),
                                    GemvLaunch(8, 1024, 2, 4)], ids=repr)
def test_gemv_at_8b_shapes(n, k, launch):
    x = torch.randn(1, k, dtype=BF16, device="cuda")
    weight = torch.randn(n, k, dtype=BF16, device="cuda") * 0.02
    bias = torch.randn(n, dtype=BF16, device="cuda")
    for b in (None, bias):
        out = kernels.gemv(x, weight, b, launch=launch)
        assert rel_err(out, gemv_ref(x, weight, b)) < 1e-2
        assert int(ARRIVALS.get(x.device, 1).abs().sum()) == 0
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    scale = torch.rand(n, device="cuda") * 1e-3 + 1e-4
    out = kernels.gemv(x, w8, bias, scale, launch=launch)
    assert rel_err(out, w8a16_gemm_ref(x, w8, scale, bias)) < 1e-2


@pytest.mark.parametrize("n,k", [(INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)])
@pytest.mark.parametrize("m", [1, 7, 16, 300])
def test_w8a16_gemm(m, n, k):
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    scale = torch.rand(n, device="cuda") * 1e-3
    x = torch.randn(m, k, dtype=BF16, device="cuda")
    out = kernels.w8a16_gemm(x, weight, scale)
    assert rel_err(out, w8a16_gemm_ref(x, weight, scale)) < 1e-2


@pytest.mark.parametrize("n,k", [(INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)])
@pytest.mark.parametrize("m", [5, 256, 1000])
def test_w8a8_gemm(m, n, k):
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    scale = torch.rand(n, device="cuda") * 1e-3
    x = torch.randn(m, k, dtype=BF16, device="cuda")
    bias = torch.randn(n, dtype=BF16, device="cuda")
    out = kernels.w8a8_gemm(x, weight, scale, bias)
    assert rel_err(out, w8a8_gemm_ref(x, weight, scale, bias)) < 1e-2
    q, s = kernels.quantize_rows(x)
    ref_q, ref_s = quantize_rows_ref(x)
    assert (q.int() - ref_q.int()).abs().max() <= 1 and torch.allclose(s, ref_s)


def test_int8_gemm_exact_on_small_integers():
    weight = torch.randint(-5, 6, (4096, 1024), dtype=torch.int8, device="cuda")
    x = torch.randint(-3, 4, (16, 1024), device="cuda").to(BF16)
    x[:, 0] = 127
    ones = torch.ones(4096, device="cuda")
    exact = (x.float() @ weight.float().t()).to(BF16)
    assert torch.equal(kernels.w8a16_gemm(x, weight, ones), exact)
    assert torch.equal(kernels.w8a8_gemm(x, weight, ones), exact)


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8"])
def test_int8_tiny_checkpoint_on_gpu(tmp_path, scheme):
    """An INT8 checkpoint served in bf16 on the GPU runs the INT8 kernels in every projection
    and stays close to the bf16 model's logits."""
    from orchestration.commands.quantize import write_int8_checkpoint
    from services.engine.loader import load_model
    from tests.helpers.paged_batch import PagedHarness, PagedSequence

    out = write_int8_checkpoint("tiny-random", tmp_path / scheme, scheme)
    prompt = list(range(3, 90, 3))
    logits = {}
    for name, path in (("bf16", "tiny-random"), ("int8", str(out))):
        loaded = load_model(path, dtype="bfloat16", device="cuda")
        harness = PagedHarness(loaded.model, loaded.config, block_size=16)
        logits[name] = harness.step([(PagedSequence(prompt), len(prompt))]).float()
    assert rel_err(logits["int8"], logits["bf16"]) < 0.05
