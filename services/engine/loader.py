"""Load a model by preset name or HF checkpoint directory, ready to serve.

A directory holds config.json, one or several *.safetensors (sharded ones listed in
model.safetensors.index.json), tokenizer.json, tokenizer_config.json and optionally
generation_config.json (the EOS ids generation stops at). Presets come from presets.py and go
through the same construction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.engine.config import ModelConfig
from services.engine.errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from services.engine.model.hf_config import checkpoint_dtype, model_config_from_hf
from services.engine.model.int4_formats import SIDE_FILES, side_file_quantization_config
from services.engine.model.registry import build_model
from services.engine.model.weights import ModelSource, safetensors_files, safetensors_weights
from services.engine.presets import DEFAULT_PRESET, PRESETS, preset_source
from services.engine.tokenizer import Tokenizer

__all__ = ["DEFAULT_PRESET", "PRESETS", "LoadedModel", "LoadedTokenizer", "load_model", "load_tokenizer",
           "serving_dtype"]

SERVING_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: weights on their device, with its tokenizer and stop ids."""

    model: torch.nn.Module           # forward(input_ids, positions, kv_cache, meta) -> hidden [T, H]
    config: ModelConfig
    tokenizer: Tokenizer
    eos_token_ids: tuple[int, ...]


def load_model(name_or_path: str, dtype: str | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """A preset name or an HF checkpoint directory -> the model built on `device`. Raises
    ModelNotFoundError, UnsupportedModelError or ConfigError (dtype) with the reason."""
    device = torch.device(device)
    source = model_source(name_or_path)
    served = serving_dtype(dtype, checkpoint_dtype(source.hf_config), device)
    config = model_config_from_hf(source.hf_config, served)
    with torch.device(device):
        model = build_model(config)
    model.load_weights(source.weights(config, device))
    model.eval()
    return LoadedModel(model, config, source.tokenizer, source.eos_token_ids)


@dataclass(frozen=True)
class LoadedTokenizer:
    """A model's tokenizer and architecture without its weights: what a gateway needs."""

    tokenizer: Tokenizer
    config: ModelConfig


def load_tokenizer(name_or_path: str) -> LoadedTokenizer:
    source = model_source(name_or_path)
    config = model_config_from_hf(source.hf_config, checkpoint_dtype(source.hf_config))
    return LoadedTokenizer(source.tokenizer, config)


def serving_dtype(requested: str | None, declared: str, device: torch.device) -> str:
    """The requested dtype, else the checkpoint's, except that half-precision checkpoints run in
    fp32 on CPU (CPU half matmuls are slow and lose precision for nothing)."""
    if requested is not None:
        if requested not in SERVING_DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(SERVING_DTYPES)}, got {requested!r}")
        return requested
    return "float32" if device.type == "cpu" else declared


def model_source(name_or_path: str) -> ModelSource:
    """A preset by name, else a checkpoint directory."""
    if name_or_path in PRESETS:
        return preset_source(name_or_path)
    return _checkpoint_source(name_or_path)


def _checkpoint_source(name_or_path: str) -> ModelSource:
    path = Path(name_or_path)
    if not path.is_dir():
        raise ModelNotFoundError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) "
                                 f"nor a checkpoint directory")
    hf_config = _with_side_file_quantization(path, _read_json(path / "config.json",
                                                              required=True))
    files = safetensors_files(path)
    eos = _eos_token_ids(path, hf_config)
    tokenizer = Tokenizer.from_dir(path, eos)
    return ModelSource(name=str(path), hf_config=hf_config, tokenizer=tokenizer,
                       eos_token_ids=tokenizer.eos_token_ids,
                       weights=lambda config, device: safetensors_weights(files))


def _with_side_file_quantization(path: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
    """config.json, with the quantization AutoGPTQ's / AutoAWQ's own file declares when
    config.json declares none."""
    if "quantization_config" in hf_config:
        return hf_config
    for name in SIDE_FILES:
        spec = _read_json(path / name, required=False)
        if spec:
            return {**hf_config, "quantization_config": side_file_quantization_config(name, spec)}
    return hf_config


def _eos_token_ids(path: Path, hf_config: dict[str, Any]) -> tuple[int, ...]:
    """generation_config.json first (it lists every stop id, e.g. Llama 3's <|eot_id|>), then
    config.json; empty means the tokenizer's eos_token decides."""
    generation = _read_json(path / "generation_config.json", required=False)
    for source in (generation, hf_config):
        eos = source.get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (int(eos),)
    return ()


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ModelNotFoundError(f"{path.parent}: {path.name} not found")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UnsupportedModelError(f"{path}: not valid JSON ({e})") from e
