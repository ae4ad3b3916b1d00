"""config.json -> ModelConfig across the spellings checkpoints use, and the rotary cache."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from services.engine.config import RopeScaling
from services.engine.errors import UnsupportedModelError
from services.engine.model.hf_config import checkpoint_dtype, model_config_from_hf
from services.engine.model.rope import cos_sin_cache, inverse_frequencies

BASE = {"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def parse(**changes):
    return model_config_from_hf({**BASE, **changes}, "float32")


def test_defaults():
    config = parse()
    assert config.num_kv_heads == 4 and config.head_dim == 16 and config.rope_scaling is None
    assert config.rope_theta == 10000.0 and not config.tie_word_embeddings


@pytest.mark.parametrize("spelling", [
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **LLAMA3}},    # transformers 5
    {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **LLAMA3}},       # 4.4x
    {"rope_theta": 5e5, "rope_scaling": {"type": "llama3", **LLAMA3}},            # older still
])
def test_rope_spellings(spelling):
    config = parse(**spelling)
    assert config.rope_theta == 5e5 and config.rope_scaling == RopeScaling(**LLAMA3)


def test_plain_rope_spellings():
    assert parse(rope_theta=1e6, rope_scaling=None).rope_theta == 1e6
    assert parse(rope_parameters={"rope_type": "default", "rope_theta": 2e4}).rope_theta == 2e4


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope"])
def test_other_rope_types_are_refused(rope_type):
    with pytest.raises(UnsupportedModelError, match=rope_type):
        parse(rope_scaling={"rope_type": rope_type, "factor": 2.0})


def test_family_differences():
    qwen = model_config_from_hf({**BASE, "architectures": ["Qwen2ForCausalLM"],
                                 "sliding_window": 32, "use_sliding_window": False,
                                 "max_position_embeddings": 1024}, "float32")
    assert qwen.attention_bias and qwen.max_position_embeddings == 1024
    mistral = model_config_from_hf({**BASE, "architectures": ["MistralForCausalLM"],
                                    "sliding_window": 512, "max_position_embeddings": 1024,
                                    "head_dim": 32}, "float32")
    # Beyond its window Mistral attends differently; serving stops at the window instead.
    assert mistral.max_position_embeddings == 512 and mistral.head_dim == 32
    assert not mistral.attention_bias
    with pytest.raises(UnsupportedModelError, match="use_sliding_window"):
        parse(use_sliding_window=True)


@pytest.mark.parametrize("missing", ["vocab_size", "hidden_size", "num_attention_heads"])
def test_missing_field_is_named(missing):
    hf = dict(BASE)
    del hf[missing]
    with pytest.raises(UnsupportedModelError, match=missing):
        model_config_from_hf(hf, "float32")


def test_checkpoint_dtype_spellings():
    assert checkpoint_dtype({"dtype": "bfloat16"}) == "bfloat16"
    assert checkpoint_dtype({"torch_dtype": "float16"}) == "float16"
    assert checkpoint_dtype({}) == "float32"


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3},
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
])
def test_inverse_frequencies_match_transformers(rope_parameters):
    hf = LlamaConfig(hidden_size=1536, num_attention_heads=12, rope_parameters=rope_parameters)
    expected, scale = ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](hf, "cpu") \
        if rope_parameters["rope_type"] != "default" else (None, 1.0)
    ours = model_config_from_hf({**BASE, **hf.to_dict(), "architectures": ["LlamaForCausalLM"]},
                                "float32")
    got = inverse_frequencies(128, ours.rope_theta, ours.rope_scaling)
    if expected is None:
        expected = 1.0 / (rope_parameters["rope_theta"]
                          ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
    assert scale == 1.0
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-6)


def test_cos_sin_cache_layout():
    cache = cos_sin_cache(8, 10, 10000.0, None)
    assert cache.shape == (10, 8) and cache.dtype == torch.float32
    torch.testing.assert_close(cache[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    inv = inverse_frequencies(8, 10000.0, None)
    torch.testing.assert_close(cache[7, :4], torch.cos(7 * inv))
    torch.testing.assert_close(cache[7, 4:], torch.sin(7 * inv))


def test_quantization_config_is_read():
    assert parse().quantization is None
    spec = {"quant_method": "tandem-int8", "scheme": "w8a8"}
    assert parse(quantization_config=spec).quantization == "w8a8"
    gptq = parse(quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 64})
    assert (gptq.quantization.method, gptq.quantization.group_size) == ("gptq", 64)
    with pytest.raises(UnsupportedModelError, match="quantization_config"):
        parse(quantization_config={"quant_method": "gptq", "bits": 3})
    with pytest.raises(UnsupportedModelError, match="quantization_config"):
        parse(quantization_config={"quant_method": "bitsandbytes"})
