"""Tiny random HF checkpoints written with transformers, to compare our model against HF's.

`make_hf_checkpoint(tmp_path, family)` saves config.json + safetensors (optionally sharded) +
the byte-level tokenizer files + generation_config.json into a fresh directory and returns it.
Families use odd sizes (hidden 72, 6 heads over 2 or 3 KV heads, intermediate 100) and between
them cover llama3 rope scaling, MHA, GQA, q/k/v biases and tied embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers

from services.engine.presets_tokenizer import (EOS, END_OF_TURN, build_byte_level_tokenizer,
                                               tokenizer_config)

_COMMON = dict(hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=6,
               max_position_embeddings=256, rms_norm_eps=1e-5, hidden_act="silu")

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # Llama 3.1: GQA and llama3 rope scaling (small original context, so scaling matters here).
    "llama3": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=4.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=32))),
    # Llama 2: multi-head attention, plain rope, a different eps.
    "llama2": ("LlamaConfig", dict(num_key_value_heads=6, rms_norm_eps=1e-6)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=3, head_dim=12, sliding_window=None,
                                      rope_parameters=dict(rope_type="default",
                                                           rope_theta=1000000.0))),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True)),
}
MODEL_CLASSES = {"LlamaConfig": "LlamaForCausalLM", "MistralConfig": "MistralForCausalLM",
                 "Qwen2Config": "Qwen2ForCausalLM"}


def hf_config(family: str, vocab_size: int, **overrides: Any) -> transformers.PretrainedConfig:
    config_class, family_args = FAMILIES[family]
    args = {**_COMMON, **family_args, "vocab_size": vocab_size, **overrides}
    return getattr(transformers, config_class)(**args)


def make_hf_model(family: str, vocab_size: int, seed: int = 0,
                  **overrides: Any) -> transformers.PreTrainedModel:
    """A random HF model in fp32, eval mode. Every parameter (biases and norms included) is
    redrawn from `seed` so that loading any of them wrongly shows in the logits."""
    config = hf_config(family, vocab_size, **overrides)
    model = getattr(transformers, MODEL_CLASSES[type(config).__name__])(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.05 * noise)
    return model.eval()


def make_hf_checkpoint(tmp_path: Path, family: str, *, sharded: bool = False,
                       dtype: torch.dtype = torch.float32, seed: int = 0,
                       **overrides: Any) -> Path:
    """Write a checkpoint directory under tmp_path and return its path. `sharded` splits the
    weights into several safetensors files with an index; `dtype` is the dtype saved."""
    tokenizer = build_byte_level_tokenizer()
    model = make_hf_model(family, tokenizer.get_vocab_size(), seed, **overrides)
    path = Path(tmp_path) / f"{family}-{'sharded' if sharded else 'single'}-{seed}"
    model.to(dtype).save_pretrained(path, max_shard_size="40KB" if sharded else "2GB")
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config()))
    eos = [tokenizer.token_to_id(EOS), tokenizer.token_to_id(END_OF_TURN)]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return path


def load_hf_model(path: Path) -> transformers.PreTrainedModel:
    """The reference: the checkpoint as transformers loads it, in fp32."""
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy_continuation(hf_model: transformers.PreTrainedModel, prompt_ids: list[int],
                           max_new_tokens: int) -> list[int]:
    """transformers' greedy generate, ignoring EOS: the token ids after the prompt."""
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()
