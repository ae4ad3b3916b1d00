"""Frozen, validated configuration for the engine. Built once at the entry point; each component
receives only its own section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from services.engine.errors import ConfigError


@dataclass(frozen=True)
class RopeScaling:
    """`rope_scaling` of type llama3 (Llama 3.1+). Other types are rejected by the loader."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


INT8_SCHEMES = ("w8a16", "w8a8", "int8")
INT4_METHODS = ("gptq", "awq")


@dataclass(frozen=True)
class Int4Scheme:
    """4-bit weights from a GPTQ or AWQ checkpoint (16-bit activations), as its
    quantization_config declares them; model/int4_formats.py reads that config."""

    method: str                        # "gptq" | "awq": which published tensor layout
    group_size: int | None = 128       # input channels sharing a scale and zero; None: all of them
    zeros_minus_one: bool = False      # GPTQ v1 ("checkpoint_format": "gptq") stores zero - 1

    def __post_init__(self) -> None:
        if self.method not in INT4_METHODS:
            raise ConfigError(f"int4 method must be one of {INT4_METHODS}, got {self.method!r}")
        if self.group_size is not None and self.group_size <= 0:
            raise ConfigError(f"group_size must be > 0 or None, got {self.group_size}")
        if self.zeros_minus_one and self.method != "gptq":
            raise ConfigError("zeros_minus_one is a GPTQ v1 convention only")

    @property
    def name(self) -> str:
        return f"{self.method}-w4a16"


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a Llama-family model, read from an HF config.json."""

    architecture: str                 # e.g. "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False      # q/k/v projections carry a bias (Qwen2)
    dtype: str = "bfloat16"           # torch dtype name of the weights as served
    quantization: str | Int4Scheme | None = None   # None | "w8a16" | "w8a8" | "int8" | Int4Scheme

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads ({self.num_heads}) must be a multiple of "
                              f"num_kv_heads ({self.num_kv_heads})")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if not (self.quantization is None or isinstance(self.quantization, Int4Scheme)
                or self.quantization in INT8_SCHEMES):
            raise ConfigError(f"quantization must be w8a16, w8a8, int8 or an Int4Scheme, "
                              f"got {self.quantization!r}")

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V for one token across all layers, in the serving dtype."""
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights as served, from the shapes: embeddings, norms and the LM head in the
        serving dtype; the layers' projections in INT8 with a scale per output row, or in INT4
        with a scale and a zero per group of input channels, when quantized."""
        itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        projection_out = q + 2 * kv + h + 3 * self.intermediate_size     # q, k, v, o, gate, up, down
        projection_weights = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size
        if isinstance(self.quantization, Int4Scheme):
            group = self.quantization.group_size or h
            projections = projection_weights // 2 + projection_weights // group * (itemsize + 1)
        elif self.quantization:
            projections = projection_weights + projection_out * itemsize
        else:
            projections = projection_weights * itemsize
        layer = projections + 2 * h * itemsize
        if self.attention_bias:
            layer += (q + 2 * kv) * itemsize
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + (embeddings + h) * itemsize

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV pool. Its size is num_blocks when given, else what the memory budget holds,
    never more than `max_pool_tokens` need. On a GPU the budget is this worker's share of the
    card, weights included: `gpu_memory_bytes`, else `gpu_memory_fraction` of the card's total
    memory; the pool takes that less what this process has allocated (its weights), and never
    more than is free. On CPU, `cpu_budget_bytes` for the pool."""

    block_size: int = 16
    num_blocks: int | None = None
    cpu_budget_bytes: int = 256 * 2**20
    gpu_memory_fraction: float = 0.85
    gpu_memory_bytes: int | None = None
    max_pool_tokens: int | None = None   # the most the worker can ever use (max_num_seqs x max_model_len)
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.cpu_budget_bytes <= 0:
            raise ConfigError(f"cpu_budget_bytes must be > 0, got {self.cpu_budget_bytes}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ConfigError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        if self.gpu_memory_bytes is not None and self.gpu_memory_bytes <= 0:
            raise ConfigError(f"gpu_memory_bytes must be > 0, got {self.gpu_memory_bytes}")
        if self.max_pool_tokens is not None and self.max_pool_tokens < 1:
            raise ConfigError(f"max_pool_tokens must be >= 1, got {self.max_pool_tokens}")


# Tokens per step when none are configured. On a GPU a step of 8,192 tokens keeps prefill near the
# matmul rate (256 x 512-token prompts: 1.07x the throughput of 2,048-token steps, H200,
# benchmarks/RESULTS.md) for a longer pause of the decodes that share the step; the CPU keeps
# short steps.
STEP_TOKENS = {"cuda": 8192, "cpu": 2048}


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching with chunked prefill under a per-step token budget."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None   # None: the device's STEP_TOKENS (for_device)
    policy: str = "fcfs"              # "fcfs" | "shortest_prompt_first"
    max_model_len: int | None = None  # None: the model's max_position_embeddings

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.policy not in ("fcfs", "shortest_prompt_first"):
            raise ConfigError(f"policy must be fcfs or shortest_prompt_first, got {self.policy!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be >= 1, got {self.max_model_len}")

    def for_device(self, device_type: str) -> SchedulerConfig:
        """This config with its step budget set: the device's default unless one was given."""
        if self.max_num_batched_tokens is not None:
            return self
        budget = STEP_TOKENS.get(device_type, STEP_TOKENS["cpu"])
        return dataclasses.replace(self, max_num_batched_tokens=budget)


@dataclass(frozen=True)
class EngineConfig:
    """Everything an LLMEngine needs: which model, where it runs, and its cache and scheduler."""

    model: str = "tiny-random"        # a preset name or an HF checkpoint directory
    dtype: str | None = None          # None: the checkpoint's dtype (fp32 on CPU for fp16/bf16)
    device: str | None = None         # None: "cuda" when available, else "cpu"
    seed: int = 0
    enforce_eager: bool = False       # True: no CUDA graphs (every step eager)
    detokenize: bool = True           # False: text only for requests with stop strings (workers)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model must name a preset or a checkpoint directory")
        if self.dtype not in (None, "float32", "float16", "bfloat16"):
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
