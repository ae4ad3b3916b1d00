"""Rotary position embedding (rotate-half / NeoX form used by Llama, Mistral and Qwen2)."""

from __future__ import annotations

import torch


def rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification. q: [num_tokens, num_heads, head_dim]; k: [num_tokens, num_kv_heads,
    head_dim]; cos_sin_cache: fp32 [max_position, head_dim], cos in the first half of the last
    dim and sin in the second (one entry per rotated pair). Returns new tensors."""
    half = q.shape[-1] // 2
    cos, sin = cos_sin_cache[positions.long()].split(half, dim=-1)   # [T, half] each
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().split(half, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
           cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rotary_ref(q, k, positions, cos_sin_cache)
