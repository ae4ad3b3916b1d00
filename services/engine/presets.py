"""Models made on the fly, with no download: an HF-style config, a tokenizer that covers the whole
vocabulary (every id decodes to text that encodes back to it: presets_tokenizer.py) and seeded
random weights, fed to the same construction as a checkpoint directory.

- `tiny-random` (the default): a few MB, deterministic on every device (weights are drawn on the
  CPU), GQA with odd-ish sizes; for tests and the CPU path.
- `llama-3.1-8b-random`: the real Llama-3.1-8B shapes with random bf16 weights drawn directly on
  the target device; for GPU benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from services.engine.errors import ModelNotFoundError
from services.engine.model.weights import ModelSource, random_weights
from services.engine.presets_tokenizer import (EOS, END_OF_TURN, LATIN, WIDE, build_byte_level_tokenizer,
                                               build_full_vocab_tokenizer, tokenizer_config)
from services.engine.tokenizer import Tokenizer

DEFAULT_PRESET = "tiny-random"
PRESET_SEED = 0
TINY_VOCAB_SIZE = 512
LLAMA_31_VOCAB_SIZE = 128256


def _wrap(backend) -> Tokenizer:
    config = tokenizer_config()
    eos = (backend.token_to_id(EOS), backend.token_to_id(END_OF_TURN))
    return Tokenizer(backend, config["chat_template"], config["bos_token"], config["eos_token"], eos)


def byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE like real checkpoints carry (merged tokens that hold part of a character):
    what the tokenizer and detokenizer tests and the HF test checkpoints use, not a preset."""
    return _wrap(build_byte_level_tokenizer())


def tiny_random_tokenizer() -> Tokenizer:
    return _wrap(build_full_vocab_tokenizer(TINY_VOCAB_SIZE, LATIN))


def llama_31_8b_tokenizer() -> Tokenizer:
    return _wrap(build_full_vocab_tokenizer(LLAMA_31_VOCAB_SIZE, WIDE))


def tiny_random_config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": vocab_size, "hidden_size": 96, "intermediate_size": 232,
        "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 16, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": False, "dtype": "bfloat16",
    }


def llama_31_8b_config() -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": LLAMA_31_VOCAB_SIZE, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192},
        "tie_word_embeddings": False, "dtype": "bfloat16",
    }


def _tiny_random() -> ModelSource:
    tokenizer = tiny_random_tokenizer()
    return ModelSource(
        name="tiny-random", hf_config=tiny_random_config(tokenizer.vocab_size),
        tokenizer=tokenizer, eos_token_ids=tokenizer.eos_token_ids,
        weights=lambda config, device: random_weights(config, PRESET_SEED, torch.device("cpu")))


def _llama_31_8b_random() -> ModelSource:
    tokenizer = llama_31_8b_tokenizer()
    return ModelSource(
        name="llama-3.1-8b-random", hf_config=llama_31_8b_config(),
        tokenizer=tokenizer, eos_token_ids=tokenizer.eos_token_ids,
        weights=lambda config, device: random_weights(config, PRESET_SEED, device))


PRESET_TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {
    "tiny-random": tiny_random_tokenizer,
    "llama-3.1-8b-random": llama_31_8b_tokenizer,
}

PRESETS: dict[str, Callable[[], ModelSource]] = {
    "tiny-random": _tiny_random,
    "llama-3.1-8b-random": _llama_31_8b_random,
}


def preset_source(name: str) -> ModelSource:
    if name not in PRESETS:
        raise ModelNotFoundError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
