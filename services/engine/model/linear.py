"""The projection every model layer goes through: y = x W^T (+ b).

One module owns the weight (and optional bias) of a projection, and `projection` picks the variant
(this plain one, quantized_linear.Int8Linear or int4_linear.Int4Linear) from the model's
quantization setting, so the model never names a class. Fused projections (q|k|v, gate|up) are one
weight made of named shards, filled from the checkpoint's separate tensors. An engine that replays
CUDA graphs turns on the one-row GEMV (`use_one_row_gemv`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from services.engine.config import Int4Scheme
from services.engine.model.int4_linear import Int4Linear
from services.engine.model.quantized_linear import Int8Linear
from services.engine.model.shards import load_shard, shard_offsets


@runtime_checkable
class Projection(Protocol):
    """What the model and its weight loading rely on; every projection variant provides it."""

    num_shards: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def load(self, param_name: str, tensor: torch.Tensor, shard: int = 0) -> None: ...


def projection(in_features: int, out_features: int | Sequence[int], *, bias: bool = False,
               dtype: torch.dtype | None = None,
               quantization: str | Int4Scheme | None = None) -> nn.Module:
    """The projection for the model's quantization setting (ModelConfig.quantization): the plain
    Linear, an INT8 one (quantized_linear.py) for "w8a16" / "w8a8" / "int8", or an INT4 one
    (int4_linear.py) for a GPTQ / AWQ Int4Scheme."""
    if quantization is None:
        return Linear(in_features, out_features, bias=bias, dtype=dtype)
    if isinstance(quantization, Int4Scheme):
        return Int4Linear(in_features, out_features, quantization, bias=bias, dtype=dtype)
    return Int8Linear(in_features, out_features, quantization, bias=bias, dtype=dtype)


def use_one_row_gemv(model: nn.Module) -> None:
    """One-row products of the model's bf16 / int8 projections take our GEMV (kernels/gemv.py)
    where its table lists the shape. For an engine that replays CUDA graphs: replayed, the GEMV
    is faster than cuBLAS; launched eagerly from Python, its launch costs the host more than
    cuBLAS's, so an engine without graphs keeps cuBLAS (benchmarks/RESULTS.md, run 11)."""
    for module in model.modules():
        if isinstance(module, (Linear, Int8Linear)):
            module.one_row_gemv = True


class Linear(nn.Module):
    """out_features is one size, or the sizes of the shards laid end to end along the output."""

    def __init__(self, in_features: int, out_features: int | Sequence[int], bias: bool = False,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.shard_offsets = shard_offsets(out_features)
        self.in_features, self.out_features = in_features, self.shard_offsets[-1]
        self.num_shards = len(self.shard_offsets) - 1
        self.weight = nn.Parameter(torch.empty(self.out_features, in_features, dtype=dtype),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(self.out_features, dtype=dtype), requires_grad=False)
                     if bias else None)
        self.one_row_gemv = False       # set by use_one_row_gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_row_gemv and x.shape[0] == 1 and x.is_cuda:
            # One row (a batch-1 decode): the GEMV where the card's sweep found it faster.
            launch = kernels.gemv_launch(self.out_features, self.in_features, x.dtype)
            if launch is not None:
                return kernels.gemv(x, self.weight, self.bias, launch=launch)
        return F.linear(x, self.weight, self.bias)

    def load(self, param_name: str, tensor: torch.Tensor, shard: int = 0) -> None:
        """Copy a checkpoint tensor into `weight` or `bias`, or into one shard of them."""
        load_shard(self, param_name, tensor, shard)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, shards={self.num_shards}")
