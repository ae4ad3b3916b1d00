"""The projection module: fused shards filled from separate tensors, and its typed errors."""

from __future__ import annotations

import pytest
import torch

from services.engine.errors import UnsupportedModelError
from services.engine.model.linear import Linear, Projection, projection
from services.engine.model.quantized_linear import Int8Linear


def test_fused_shards_equal_separate_projections():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 7, generator=gen) for n in (6, 2, 2))
    bias = [torch.randn(n, generator=gen) for n in (6, 2, 2)]
    fused = projection(7, (6, 2, 2), bias=True, dtype=torch.float32)
    assert isinstance(fused, Projection) and fused.num_shards == 3
    for shard, (w, b) in enumerate(zip((q, k, v), bias)):
        fused.load("weight", w, shard)
        fused.load("bias", b, shard)
    x = torch.randn(5, 7, generator=gen)
    expected = torch.cat([x @ w.T + b for w, b in zip((q, k, v), bias)], dim=-1)
    torch.testing.assert_close(fused(x), expected)


def test_load_errors_name_the_problem():
    layer = Linear(4, (3, 5))
    with pytest.raises(UnsupportedModelError, match=r"shard 1.*\(4, 4\).*\(5, 4\)"):
        layer.load("weight", torch.zeros(4, 4), shard=1)
    with pytest.raises(UnsupportedModelError, match="bias"):
        layer.load("bias", torch.zeros(3))


def test_quantization_selects_the_int8_projection():
    layer = projection(4, (4, 2), quantization="w8a16")
    assert isinstance(layer, Int8Linear) and isinstance(layer, Projection)
    assert layer.num_shards == 2 and layer.weight.dtype == torch.int8
    with pytest.raises(UnsupportedModelError, match="w4a16"):
        projection(4, 4, quantization="w4a16")


def test_the_one_row_gemv_is_for_engines_that_replay_graphs():
    """Off by default (an eager engine keeps cuBLAS, whose launch costs the host less); the
    graph capture turns it on for every bf16 and int8 projection."""
    from services.engine.model.linear import use_one_row_gemv

    model = torch.nn.ModuleDict({"plain": Linear(32, 16), "int8": Int8Linear(32, 16, "w8a16")})
    assert not any(m.one_row_gemv for m in model.values())
    use_one_row_gemv(model)
    assert all(m.one_row_gemv for m in model.values())
