"""HF config.json -> ModelConfig, for every family in the registry.

Rope settings come in two spellings: transformers 5.x writes `rope_parameters` (rope_theta,
rope_type, scaling fields in one dict); older checkpoints write `rope_theta` and `rope_scaling`
(whose type key is `rope_type` or, older still, `type`). Both are read."""

from __future__ import annotations

from typing import Any

from services.engine.config import ModelConfig, RopeScaling
from services.engine.errors import ConfigError, UnsupportedModelError
from services.engine.model.quantized_linear import quantization_scheme
from services.engine.model.registry import MODEL_CLASSES

DTYPE_NAMES = {"float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
               "bfloat16": "bfloat16"}


def checkpoint_dtype(hf: dict[str, Any]) -> str:
    """The dtype the checkpoint declares (`dtype` in transformers 5, `torch_dtype` before)."""
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if name not in DTYPE_NAMES:
        raise UnsupportedModelError(f"checkpoint dtype {name!r} is not supported")
    return DTYPE_NAMES[name]


def model_config_from_hf(hf: dict[str, Any], dtype: str) -> ModelConfig:
    architectures = hf.get("architectures") or []
    if not architectures:
        raise UnsupportedModelError("config.json names no architecture (`architectures`)")
    arch = architectures[0]
    if arch not in MODEL_CLASSES:
        raise UnsupportedModelError(f"architecture {arch!r} is not supported; supported: "
                                    f"{', '.join(sorted(MODEL_CLASSES))}")
    _check_supported(hf, arch)
    num_heads = _required(hf, "num_attention_heads")
    hidden = _required(hf, "hidden_size")
    rope_theta, rope_scaling = _rope(hf)
    try:
        return ModelConfig(
            architecture=arch,
            vocab_size=_required(hf, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_required(hf, "intermediate_size"),
            num_layers=_required(hf, "num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hidden // num_heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=_max_positions(hf),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=arch == "Qwen2ForCausalLM",
            dtype=dtype,
            quantization=quantization_scheme(hf),
        )
    except ConfigError as e:
        raise UnsupportedModelError(f"config.json: {e}") from e


def _required(hf: dict[str, Any], key: str) -> Any:
    if hf.get(key) is None:
        raise UnsupportedModelError(f"config.json lacks {key!r}")
    return hf[key]


def _check_supported(hf: dict[str, Any], arch: str) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    # Llama's attention_bias also puts a bias on o_proj, mlp_bias on the MLP: neither is served.
    for key in ("attention_bias", "mlp_bias"):
        if arch == "LlamaForCausalLM" and hf.get(key):
            raise UnsupportedModelError(f"{key}=true is not supported for {arch}")
    if hf.get("use_sliding_window"):
        raise UnsupportedModelError("use_sliding_window=true is not supported")


def _max_positions(hf: dict[str, Any]) -> int:
    """Mistral's sliding window (Qwen2 declares one but turns it off with use_sliding_window):
    within the window attention is full attention, so the served length is capped there rather
    than computing something different beyond it."""
    limit = int(hf.get("max_position_embeddings", 4096))
    window = hf.get("sliding_window")
    if window and hf.get("use_sliding_window", True) and window < limit:
        limit = int(window)
    return limit


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta, scaling = params["rope_theta"], params
    else:
        theta, scaling = hf.get("rope_theta", 10000.0), hf.get("rope_scaling")
    rope_type = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported (default, llama3)")
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
    except KeyError as e:
        raise UnsupportedModelError(f"llama3 rope scaling lacks {e.args[0]!r}") from None
