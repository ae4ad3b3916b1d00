"""Where a model's tensors come from: a checkpoint's safetensors files or a seeded generator.

Both yield (HF tensor name, tensor) pairs into the same `load_weights`, so a preset and a
checkpoint directory are built by one code path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from services.engine.config import ModelConfig
from services.engine.errors import ModelNotFoundError, UnsupportedModelError
from services.engine.tokenizer import Tokenizer

WeightStream = Iterator[tuple[str, torch.Tensor]]

INIT_STD = 0.02   # the initializer_range of the HF Llama family


@dataclass(frozen=True)
class ModelSource:
    """Everything a model is built from: its HF config.json contents, its tokenizer, its EOS ids
    and a stream of its tensors (given the served config and the target device)."""

    name: str
    hf_config: dict[str, Any]
    tokenizer: Tokenizer
    eos_token_ids: tuple[int, ...]
    weights: Callable[[ModelConfig, torch.device], WeightStream]


def safetensors_files(path: Path) -> list[Path]:
    """The shards named by model.safetensors.index.json, else every *.safetensors file."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelNotFoundError(f"{path}: shards named in {index.name} are missing: {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if any(path.glob("*.bin")):
            raise UnsupportedModelError(f"{path}: only safetensors checkpoints are supported")
        raise ModelNotFoundError(f"{path}: no *.safetensors weights found")
    return files


def safetensors_weights(files: list[Path]) -> WeightStream:
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def hf_tensor_shapes(config: ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The tensors of an HF checkpoint of this configuration, by name."""
    h, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    yield "model.embed_tokens.weight", (config.vocab_size, h)
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}"
        yield f"{prefix}.input_layernorm.weight", (h,)
        for proj, size in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            yield f"{prefix}.self_attn.{proj}.weight", (size, h)
            if config.attention_bias:
                yield f"{prefix}.self_attn.{proj}.bias", (size,)
        yield f"{prefix}.self_attn.o_proj.weight", (h, q)
        yield f"{prefix}.post_attention_layernorm.weight", (h,)
        yield f"{prefix}.mlp.gate_proj.weight", (config.intermediate_size, h)
        yield f"{prefix}.mlp.up_proj.weight", (config.intermediate_size, h)
        yield f"{prefix}.mlp.down_proj.weight", (h, config.intermediate_size)
    yield "model.norm.weight", (h,)
    if not config.tie_word_embeddings:
        yield "lm_head.weight", (config.vocab_size, h)


def random_weights(config: ModelConfig, seed: int, device: torch.device) -> WeightStream:
    """Seeded normal(0, INIT_STD) matrices and biases, norms around one. Drawn in fp32 on
    `device`, so the same seed and device give the same weights whatever the served dtype."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, shape in hf_tensor_shapes(config):
        tensor = torch.empty(shape, dtype=torch.float32, device=device)
        tensor.normal_(0.0, INIT_STD, generator=generator)
        if name.endswith("norm.weight"):
            tensor.add_(1.0)
        yield name, tensor
