"""The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5) over the paged KV pool.

The differences between the families are configuration (GQA, rope theta and scaling, q/k/v bias,
tied embeddings, RMSNorm eps), so one class serves them all. A step's tokens arrive flattened:
prefill chunks and decode tokens of many sequences end to end, each with its own position;
`AttentionMetadata` says where each sequence's tokens are and which pages hold its context."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

import kernels
from services.engine.config import ModelConfig
from services.engine.errors import UnsupportedModelError
from services.engine.model.attention import AttentionMetadata, paged_attention
from services.engine.model.linear import Linear, Projection, projection
from services.engine.model.rope import cos_sin_cache

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Checkpoint tensors that land in one shard of a fused projection: name -> (fused name, shard).
_FUSED_SHARDS = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}
# Tensors some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return kernels.rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        quant = config.quantization
        self.qkv_proj = projection(config.hidden_size, (self.q_size, self.kv_size, self.kv_size),
                                   bias=config.attention_bias, dtype=dtype, quantization=quant)
        self.o_proj = projection(self.q_size, config.hidden_size, dtype=dtype, quantization=quant)

    # No forward: the decoder layer calls paged attention between these two (see there).
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, heads, head_dim] and k, v [T, kv_heads, head_dim], before rotary (paged
        attention rotates them as it writes the pages)."""
        num_tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        return q, k, v

    def output(self, attention: torch.Tensor) -> torch.Tensor:
        """attention [T, heads, head_dim] -> [T, hidden]."""
        return self.o_proj(attention.reshape(attention.shape[0], self.q_size))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        size = config.intermediate_size
        quant = config.quantization
        self.gate_up_proj = projection(config.hidden_size, (size, size), dtype=dtype,
                                       quantization=quant)
        self.down_proj = projection(size, config.hidden_size, dtype=dtype, quantization=quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(kernels.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, dtype)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None,
                positions: torch.Tensor, cos_sin: torch.Tensor, kv_layer: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, residual = self.before_attention(hidden, residual)
        attention = paged_attention(q, k, v, positions, cos_sin, kv_layer, meta,
                                    self.self_attn.scale)
        return self.after_attention(attention, residual)

    # The layer in two parts around its paged attention, which reads the batch's metadata: the
    # parts see only token-shaped tensors (what piecewise CUDA graphs capture).
    def before_attention(self, hidden: torch.Tensor, residual: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (before rotary) and the residual stream."""
        # The residual add is fused into the norm that follows it; the first layer has none yet.
        if residual is None:
            residual = hidden
            x, _ = self.input_layernorm(hidden)
        else:
            x, residual = self.input_layernorm(hidden, residual)
        q, k, v = self.self_attn.project(x)
        return q, k, v, residual

    def after_attention(self, attention: torch.Tensor, residual: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.post_attention_layernorm(self.self_attn.output(attention), residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(config, dtype) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class LlamaForCausalLM(nn.Module):
    """Parameter names follow the HF checkpoints (with fused qkv_proj / gate_up_proj), so
    `load_weights` maps a checkpoint tensor to its place by name."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dtype = _DTYPES[config.dtype]
        self.config = config
        self.model = LlamaModel(config, dtype)
        # The output head stays in the serving dtype whatever the quantization: the logits are
        # what is most sensitive to weight rounding.
        self.lm_head = Linear(config.hidden_size, config.vocab_size, dtype=dtype)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("cos_sin_cache", cos_sin_cache(
            config.head_dim, config.max_position_embeddings, config.rope_theta,
            config.rope_scaling), persistent=False)
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [T]; kv_cache: [num_blocks, num_layers, 2, block_size,
        num_kv_heads, head_dim]. Returns the final hidden states [T, hidden]."""
        hidden = self.model.embed_tokens(input_ids)
        residual = None
        for index, layer in enumerate(self.model.layers):
            hidden, residual = layer(hidden, residual, positions, self.cos_sin_cache,
                                     kv_cache[:, index], meta)
        hidden, _ = self.model.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] (usually each sequence's last token) -> fp32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Fill every parameter from (HF name, tensor) pairs; raise UnsupportedModelError on an
        unknown name, a wrong shape, or a parameter the checkpoint does not provide."""
        params = dict(self.named_parameters())
        loaded: set[tuple[str, int]] = set()
        for name, tensor in weights:
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue   # some tied checkpoints store the shared matrix twice
            loaded.add(self._load_one(name, tensor, params))
        missing = sorted(f"{name}[{shard}]" for name, shard in self._expected_slots(params) - loaded)
        if missing:
            raise UnsupportedModelError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")

    def _expected_slots(self, params: dict[str, nn.Parameter]) -> set[tuple[str, int]]:
        """(parameter, shard) pairs a complete checkpoint fills."""
        slots = set()
        for name in params:
            module = self.get_submodule(name.rpartition(".")[0])
            shards = module.num_shards if isinstance(module, Projection) else 1
            slots.update((name, shard) for shard in range(shards))
        return slots

    def _load_one(self, name: str, tensor: torch.Tensor,
                  params: dict[str, nn.Parameter]) -> tuple[str, int]:
        module_path, _, param_name = name.rpartition(".")
        parent, _, leaf = module_path.rpartition(".")
        fused, shard = _FUSED_SHARDS.get(leaf, (leaf, 0))
        target = f"{parent}.{fused}" if parent else fused
        full_name = f"{target}.{param_name}"
        if full_name not in params:
            raise UnsupportedModelError(f"checkpoint tensor {name!r} has no place in "
                                        f"{self.config.architecture}")
        module = self.get_submodule(target)
        if isinstance(module, Projection):
            module.load(param_name, tensor, shard)
        else:
            param = params[full_name]
            if tuple(param.shape) != tuple(tensor.shape):
                raise UnsupportedModelError(f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                                            f"model expects {tuple(param.shape)}")
            param.data.copy_(tensor)
        return full_name, shard
