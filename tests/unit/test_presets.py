"""The presets: tiny-random (loaded here) and llama-3.1-8b-random (only its shapes, on the meta
device: its weights are never drawn in CPU tests)."""

from __future__ import annotations

import torch

from services.engine.loader import DEFAULT_PRESET, PRESETS, load_model
from services.engine.model.hf_config import model_config_from_hf
from services.engine.model.registry import build_model
from services.engine.model.weights import hf_tensor_shapes
from services.engine.presets import llama_31_8b_config
from tests.helpers.paged_batch import PagedHarness, PagedSequence


def test_presets_are_listed():
    assert DEFAULT_PRESET == "tiny-random"
    assert set(PRESETS) == {"tiny-random", "llama-3.1-8b-random"}


def test_tiny_random_is_small_gqa_and_deterministic():
    a, b = load_model("tiny-random"), load_model("tiny-random")
    config = a.config
    assert config.num_heads > config.num_kv_heads > 0 and config.vocab_size == a.tokenizer.vocab_size
    assert config.dtype == "float32"           # declared bf16, served fp32 on CPU
    size = sum(p.numel() * p.element_size() for p in a.model.parameters())
    assert 2**20 < size < 8 * 2**20
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    assert a.eos_token_ids and a.eos_token_ids == a.tokenizer.eos_token_ids


def test_tiny_random_bf16_holds_the_fp32_weights_rounded():
    fp32, bf16 = load_model("tiny-random"), load_model("tiny-random", dtype="bfloat16")
    x = fp32.model.state_dict()["model.layers.1.mlp.down_proj.weight"]
    y = bf16.model.state_dict()["model.layers.1.mlp.down_proj.weight"]
    assert y.dtype == torch.bfloat16 and torch.equal(x.to(torch.bfloat16), y)


def test_tiny_random_generates_distinct_tokens_and_chats():
    loaded = load_model("tiny-random")
    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}])
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    logits = PagedHarness(loaded.model, loaded.config).step([(PagedSequence(ids), len(ids))])
    assert torch.isfinite(logits).all()
    assert len(set(logits.argmax(-1).tolist())) > 1     # not a constant model


def test_llama_31_8b_shapes():
    config = model_config_from_hf(llama_31_8b_config(), "bfloat16")
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (128256, 4096, 32)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (32, 8, 128)
    assert config.intermediate_size == 14336 and config.rope_theta == 500000.0
    assert config.rope_scaling.factor == 8.0
    assert config.rope_scaling.original_max_position_embeddings == 8192
    assert config.kv_bytes_per_token == 128 * 1024      # 32 layers x K,V x 8 heads x 128 x 2 B
    assert sum(torch.Size(s).numel() for _, s in hf_tensor_shapes(config)) == 8_030_261_248
    with torch.device("meta"):
        model = build_model(config)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 8_030_261_248
    assert params["model.layers.0.self_attn.qkv_proj.weight"].shape == (6144, 4096)
    assert params["model.layers.31.mlp.gate_up_proj.weight"].shape == (28672, 4096)
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert model.cos_sin_cache.shape == (131072, 128)
