"""KV page write: scatter the new tokens' K/V into their slots in the paged pool."""

from __future__ import annotations

import torch


def write_kv_pages_ref(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                       value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """The specification. key/value: [num_tokens, num_kv_heads, head_dim]; slot_mapping: int64
    [num_tokens], slot = block_id * block_size + offset. Writes in place."""
    block_size = key_cache.shape[1]
    blocks = torch.div(slot_mapping, block_size, rounding_mode="floor")
    offsets = slot_mapping % block_size
    key_cache[blocks, offsets] = key.to(key_cache.dtype)
    value_cache[blocks, offsets] = value.to(value_cache.dtype)


def write_kv_pages(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                   value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    write_kv_pages_ref(key, value, key_cache, value_cache, slot_mapping)
