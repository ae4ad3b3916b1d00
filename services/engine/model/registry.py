"""Architecture name (config.json `architectures[0]`) -> the model class that runs it.

Mistral and Qwen2 differ from Llama only in configuration (see hf_config.py), so they share its
class; a family with a different layer structure would add its own class here."""

from __future__ import annotations

from torch import nn

from services.engine.config import ModelConfig
from services.engine.errors import UnsupportedModelError
from services.engine.model.llama import LlamaForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
}


def model_class(architecture: str) -> type[nn.Module]:
    try:
        return MODEL_CLASSES[architecture]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {architecture!r} is not supported; supported: "
            f"{', '.join(sorted(MODEL_CLASSES))}") from None


def build_model(config: ModelConfig) -> nn.Module:
    """An uninitialised model with its parameters on the current default device."""
    return model_class(config.architecture)(config)
