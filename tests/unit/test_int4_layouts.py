"""GPTQ and AWQ tensors as published -> Int4Linear (the kernel's layout, read by the reference
GEMM) give the weight an independent element-by-element decoding gives; the writer's tensors
decode back to the quantized weight; act order, fused shards and malformed tensors."""

from __future__ import annotations

import pytest
import torch

from kernels.w4a16_gemm import dequantize_w4_ref
from services.engine.config import Int4Scheme
from services.engine.errors import UnsupportedModelError
from services.engine.model.int4_layouts import awq_tensors, gptq_tensors
from services.engine.model.int4_linear import Int4Linear
from services.engine.model.int4_rtn import quantize_awq_rtn, quantize_gptq_rtn
from tests.helpers.int4_decoding import decode_awq, decode_gptq

K, SHARDS, GROUP = 48, (16, 8), 16      # two output shards, as a fused projection has


def random_words(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-2**31, 2**31, shape, generator=gen, dtype=torch.int64).int()


def gptq_shard(n: int, seed: int, g_idx: torch.Tensor) -> dict[str, torch.Tensor]:
    groups = -(-K // GROUP)
    return {"qweight": random_words(K // 8, n, seed=seed),
            "qzeros": random_words(groups, n // 8, seed=seed + 1),
            "scales": (torch.rand(groups, n) + 0.5).half(), "g_idx": g_idx}


def awq_shard(n: int, seed: int) -> dict[str, torch.Tensor]:
    groups = K // GROUP
    return {"qweight": random_words(K, n // 8, seed=seed),
            "qzeros": random_words(groups, n // 8, seed=seed + 1),
            "scales": (torch.rand(groups, n) + 0.5).half()}


def loaded_weight(layer: Int4Linear) -> torch.Tensor:
    """What the layer computes with, [N, K] (its forward of the identity, through the reference
    unpacking); for the plain layout also the reference dequantization itself."""
    weight = layer(torch.eye(K)).t()
    if not layer.act_order:
        unpacked = dequantize_w4_ref(layer.qweight, layer.qzeros, layer.scales, layer.group_size)
        assert torch.equal(unpacked.t(), weight)
    return weight


@pytest.mark.parametrize("v1,g_idx_kind,g_idx_first", [
    (True, "sequential", False), (False, "sequential", False),
    (True, "desc_act", False), (True, "desc_act", True),      # rows sorted as they load
    (False, "unbalanced", False),                              # groups gathered by g_idx
])
def test_gptq_tensors_load_as_documented(v1, g_idx_kind, g_idx_first):
    gen = torch.Generator().manual_seed(3)
    g_idx = torch.arange(K, dtype=torch.int32) // GROUP
    if g_idx_kind == "desc_act":
        g_idx = g_idx[torch.randperm(K, generator=gen)]
    elif g_idx_kind == "unbalanced":
        g_idx = torch.randint(0, K // GROUP, (K,), generator=gen, dtype=torch.int32)
    layer = Int4Linear(K, SHARDS, Int4Scheme("gptq", GROUP, zeros_minus_one=v1),
                       dtype=torch.float32)
    expected = []
    for shard, n in enumerate(SHARDS):
        tensors = gptq_shard(n, seed=10 * shard, g_idx=g_idx)
        names = sorted(tensors, key=lambda name: name != "g_idx") if g_idx_first else tensors
        for name in names:
            layer.load(name, tensors[name], shard)
        expected.append(decode_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"],
                                    g_idx, v1))
    assert layer.act_order == (g_idx_kind != "sequential")
    assert (layer.input_perm is not None) == (g_idx_kind == "desc_act")
    assert torch.equal(loaded_weight(layer), torch.cat(expected))


def test_awq_tensors_load_as_documented():
    layer = Int4Linear(K, SHARDS, Int4Scheme("awq", GROUP), dtype=torch.float32)
    expected = []
    for shard, n in enumerate(SHARDS):
        tensors = awq_shard(n, seed=10 * shard)
        for name, tensor in tensors.items():
            layer.load(name, tensor, shard)
        expected.append(decode_awq(tensors["qweight"], tensors["qzeros"], tensors["scales"],
                                   GROUP))
    assert not hasattr(layer, "g_idx")
    assert torch.equal(loaded_weight(layer), torch.cat(expected))


@pytest.mark.parametrize("sym", [True, False])
def test_gptq_writer_tensors_decode_to_the_quantized_weight(sym):
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(int(sym)))  # a partial last group of 8
    groups = quantize_gptq_rtn(weight, GROUP, sym)
    tensors = gptq_tensors(groups.codes, groups.zeros, groups.scales.half().float(),
                           torch.arange(40) // GROUP)
    assert tensors["qweight"].shape == (5, 24) and tensors["qzeros"].shape == (3, 3)
    decoded = decode_gptq(tensors["qweight"], tensors["qzeros"], tensors["scales"],
                          tensors["g_idx"], v1=True)
    rounded = type(groups)(groups.codes, groups.zeros, groups.scales.half().float())
    assert torch.equal(decoded, rounded.dequantize(GROUP))
    # Round to nearest: within half a step of the weight wherever no code was clamped.
    step = groups.scales[torch.arange(40) // GROUP].t()
    unclamped = ((groups.codes > 0) & (groups.codes < 15)).t()      # codes are [K, N]
    assert unclamped.float().mean() > 0.8
    error = (rounded.dequantize(GROUP) - weight).abs()
    assert (error <= step * 0.51 + 1e-3)[unclamped].all()


def test_awq_writer_tensors_decode_to_the_quantized_weight():
    weight = torch.randn(24, 48, generator=torch.Generator().manual_seed(0))
    groups = quantize_awq_rtn(weight, GROUP)
    tensors = awq_tensors(groups.codes, groups.zeros, groups.scales)
    assert tensors["qweight"].shape == (48, 3) and tensors["qzeros"].shape == (3, 3)
    decoded = decode_awq(tensors["qweight"], tensors["qzeros"], tensors["scales"], GROUP)
    rounded = type(groups)(groups.codes, groups.zeros, tensors["scales"].float())
    assert torch.equal(decoded, rounded.dequantize(GROUP))
    assert ((decoded - weight).abs() <= groups.scales.max() * 0.51 + 1e-3).all()


def test_malformed_tensors_are_refused_by_name():
    layer = Int4Linear(K, SHARDS, Int4Scheme("gptq", GROUP), dtype=torch.float32)
    g_idx = torch.arange(K, dtype=torch.int32) // GROUP
    tensors = gptq_shard(16, seed=0, g_idx=g_idx)
    with pytest.raises(UnsupportedModelError, match=r"qweight.*\(6, 8\)"):
        layer.load("qweight", tensors["qweight"], 1)              # shard 1 is 8 wide
    with pytest.raises(UnsupportedModelError, match="qzeros.*int32"):
        layer.load("qzeros", tensors["qzeros"].to(torch.int16), 0)
    with pytest.raises(UnsupportedModelError, match="unquantized weight"):
        layer.load("weight", torch.zeros(16, K), 0)
    layer.load("g_idx", g_idx, 0)
    with pytest.raises(UnsupportedModelError, match="g_idx differs"):
        layer.load("g_idx", g_idx.flip(0), 1)
    with pytest.raises(UnsupportedModelError, match="multiples of 8"):
        Int4Linear(K, (16, 12), Int4Scheme("awq", GROUP))
