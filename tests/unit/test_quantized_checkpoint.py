"""`tandem quantize` writes an INT8 checkpoint of the tiny preset; the loader builds INT8
projections from its quantization_config, the engine generates from it, and its logits stay
close to the unquantized model's."""

from __future__ import annotations

import json

import pytest
import torch

from orchestration.cli import main as tandem
from orchestration.commands.quantize import write_int8_checkpoint
from services.engine.config import CacheConfig, EngineConfig
from services.engine.engine import LLMEngine
from services.engine.errors import ConfigError, UnsupportedModelError
from services.engine.loader import load_model
from services.engine.model.quantized_linear import Int8Linear
from services.engine.sampling_params import SamplingParams
from tests.helpers.paged_batch import PagedHarness, PagedSequence

PROMPT = list(range(3, 60, 2))


def prompt_logits(loaded) -> torch.Tensor:
    harness = PagedHarness(loaded.model, loaded.config)
    return harness.step([(PagedSequence(PROMPT), len(PROMPT))])


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8", "int8"])
def test_quantized_tiny_checkpoint_loads_generates_and_stays_close(tmp_path, scheme):
    out = tmp_path / scheme
    assert tandem(["quantize", "--model", "tiny-random", "--out", str(out),
                   "--scheme", scheme]) == 0
    spec = json.loads((out / "config.json").read_text())["quantization_config"]
    assert spec["scheme"] == scheme and spec["quant_method"] == "tandem-int8"

    quantized = load_model(str(out))
    assert quantized.config.quantization == scheme
    projections = [m for m in quantized.model.modules() if isinstance(m, Int8Linear)]
    assert len(projections) == 4 * quantized.config.num_layers       # qkv, o, gate_up, down
    assert all(p.weight.dtype == torch.int8 and p.scheme == scheme for p in projections)

    reference = prompt_logits(load_model("tiny-random"))
    logits = prompt_logits(quantized)
    rel = ((logits - reference).norm() / reference.norm()).item()
    assert rel < 0.05, f"INT8 logits differ from the fp32 model's by {rel:.3f} (relative)"
    cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=-1)
    assert cosine.min() > 0.99

    engine = LLMEngine(EngineConfig(model=str(out), cache=CacheConfig(num_blocks=64)))
    engine.add_request("r", PROMPT, SamplingParams(temperature=0.0, max_tokens=6,
                                                   ignore_eos=True))
    tokens = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens += output.new_token_ids
    assert len(tokens) == 6 and all(0 <= t < quantized.config.vocab_size for t in tokens)


def test_quantize_refuses_a_non_empty_out_dir_and_unknown_schemes(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        write_int8_checkpoint("tiny-random", tmp_path / "taken", "w8a16")
    with pytest.raises(ConfigError, match="scheme"):
        write_int8_checkpoint("tiny-random", tmp_path / "new", "w4a16")


def test_unknown_quantization_config_is_refused(tmp_path):
    out = write_int8_checkpoint("tiny-random", tmp_path / "q", "w8a16")
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 3}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="quantization_config"):
        load_model(str(out))


def test_int8_projection_fills_shards_and_matches_its_dequantized_weight():
    from kernels.quantize_rows import quantize_rows_ref
    layer = Int8Linear(8, (3, 5), "w8a16", bias=True, dtype=torch.float32)
    full = torch.randn(8, 8)
    codes, scales = quantize_rows_ref(full)
    bias = torch.randn(8)
    for shard, (start, end) in enumerate(((0, 3), (3, 8))):
        layer.load("weight", codes[start:end], shard)
        layer.load("weight_scale", scales[start:end], shard)
        layer.load("bias", bias[start:end], shard)
    x = torch.randn(2, 4, 8)
    expected = x @ (codes.float() * scales[:, None]).t() + bias
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(UnsupportedModelError, match="int8"):
        layer.load("weight", torch.zeros(3, 8), 0)
    with pytest.raises(UnsupportedModelError, match=r"shard 1.*\(4, 8\)"):
        layer.load("weight", torch.zeros(4, 8, dtype=torch.int8), 1)


def test_int8_scheme_keeps_activations_for_few_rows_and_quantizes_them_above():
    """`int8` is W8A16 up to W8A16_MAX_ROWS rows and W8A8 above, on the same weights."""
    from kernels.quantize_rows import quantize_rows_ref
    from kernels.w8a8_gemm import w8a8_gemm_ref
    from kernels.w8a16_gemm import w8a16_gemm_ref
    from services.engine.model.quantized_linear import W8A16_MAX_ROWS
    layer = Int8Linear(16, 8, "int8", dtype=torch.float32)
    codes, scales = quantize_rows_ref(torch.randn(8, 16))
    layer.load("weight", codes)
    layer.load("weight_scale", scales)
    for rows, ref in ((1, w8a16_gemm_ref), (W8A16_MAX_ROWS, w8a16_gemm_ref),
                      (W8A16_MAX_ROWS + 1, w8a8_gemm_ref)):
        x = torch.randn(rows, 16)
        out = layer(x)
        assert torch.equal(out, ref(x, codes, scales)), rows
        other = w8a8_gemm_ref if ref is w8a16_gemm_ref else w8a16_gemm_ref
        assert not torch.equal(out, other(x, codes, scales)), rows
