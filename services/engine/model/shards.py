"""Fused projections (q|k|v, gate|up) are one weight made of named shards laid end to end along
the output; every projection variant fills its parameters shard by shard from the checkpoint's
separate tensors with these two functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from services.engine.errors import UnsupportedModelError


def shard_offsets(out_features: int | Sequence[int]) -> list[int]:
    """Start of each shard along the output, and the total at the end."""
    sizes = [out_features] if isinstance(out_features, int) else list(out_features)
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


def load_shard(module: nn.Module, param_name: str, tensor: torch.Tensor, shard: int) -> None:
    """Copy a checkpoint tensor into one shard of the module's parameter `param_name`."""
    param = getattr(module, param_name, None)
    if not isinstance(param, nn.Parameter):
        raise UnsupportedModelError(f"{type(module).__name__} has no parameter {param_name!r}")
    start, end = module.shard_offsets[shard], module.shard_offsets[shard + 1]
    target = param.data[start:end]
    if tuple(tensor.shape) != tuple(target.shape):
        raise UnsupportedModelError(f"{param_name} shard {shard}: checkpoint shape "
                                    f"{tuple(tensor.shape)}, model expects {tuple(target.shape)}")
    target.copy_(tensor)
