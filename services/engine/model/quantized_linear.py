"""INT8 projections: the Projection contract of linear.py (shards, `load`), holding int8 weights
[out, in] with one fp32 scale per output channel, multiplied through the INT8 kernels: W8A16
(activations stay in the served dtype) or W8A8 (activations quantized per token at run time),
or `int8`: W8A16 for a product of few rows (decode batches up to W8A16_MAX_ROWS, where the
weight's bytes set the time and W8A16 reads half of bf16's) and W8A8 above (prefill and large
decode batches, where the tensor cores set it and INT8 ones run twice as fast as bf16's; a
16-bit activation must be converted before each MMA there, which loses to cuBLAS bf16). The
three read the same int8 weights and scales: the scheme only chooses the product.

A checkpoint written by `tandem quantize` declares its scheme in config.json's
`quantization_config`; the loader puts it in ModelConfig.quantization, `linear.projection` then
builds this class for every decoder projection, and the checkpoint's `*.weight` (int8) and
`*.weight_scale` (fp32) tensors fill it by the usual names. Embeddings, norms and the LM head stay
in the served dtype. GPTQ and AWQ checkpoints (4-bit) are read by int4_formats.py into an
Int4Scheme, served by int4_linear.Int4Linear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import kernels
from services.engine.config import Int4Scheme
from services.engine.errors import UnsupportedModelError
from services.engine.model.int4_formats import INT4_METHODS, int4_scheme
from services.engine.model.shards import load_shard, shard_offsets

SCHEMES = ("w8a16", "w8a8", "int8")
W8A16_MAX_ROWS = 32     # int8: W8A16 up to this many rows, W8A8 above (benchmarks/kernels.py)
QUANT_METHOD = "tandem-int8"
# Checkpoint projections that are quantized (their HF names); everything else is kept as is.
QUANTIZED_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj")


def quantization_scheme(hf_config: dict[str, Any]) -> str | Int4Scheme | None:
    """The scheme a checkpoint's config.json declares, None for an unquantized one: an INT8
    scheme name, or the Int4Scheme of a GPTQ / AWQ checkpoint (int4_formats.py)."""
    spec = hf_config.get("quantization_config")
    if spec is None:
        return None
    if spec.get("quant_method") in INT4_METHODS:
        return int4_scheme(spec)
    if spec.get("quant_method") != QUANT_METHOD or spec.get("scheme") not in SCHEMES:
        raise UnsupportedModelError(
            f"quantization_config {spec!r} is not supported: expected quant_method "
            f"{QUANT_METHOD!r} with scheme one of {SCHEMES}, or quant_method one of "
            f"{tuple(INT4_METHODS)} (write one with `tandem quantize`)")
    return spec["scheme"]


class Int8Linear(nn.Module):
    """y = x (W * scale)^T + b with W int8. out_features is one size, or the sizes of the shards
    (q|k|v, gate|up) laid end to end; each shard's weight and scale load separately."""

    def __init__(self, in_features: int, out_features: int | Sequence[int], scheme: str,
                 bias: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise UnsupportedModelError(f"quantization must be one of {SCHEMES}, got {scheme!r}")
        self.scheme = scheme
        self.shard_offsets = shard_offsets(out_features)
        self.in_features, self.out_features = in_features, self.shard_offsets[-1]
        self.num_shards = len(self.shard_offsets) - 1
        self.weight = nn.Parameter(torch.empty(self.out_features, in_features, dtype=torch.int8),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(self.out_features, dtype=torch.float32),
                                         requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(self.out_features, dtype=dtype), requires_grad=False)
                     if bias else None)
        self.one_row_gemv = False       # set by linear.use_one_row_gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.one_row_gemv and rows.shape[0] == 1 and rows.is_cuda and self._keeps_activations(1):
            # One row: the GEMV where the card's sweep found it faster than the W8A16 GEMM.
            launch = kernels.gemv_launch(self.out_features, self.in_features, rows.dtype,
                                         int8=True)
            if launch is not None:
                out = kernels.gemv(rows, self.weight, self.bias, self.weight_scale, launch=launch)
                return out.reshape(*x.shape[:-1], self.out_features)
        gemm = kernels.w8a16_gemm if self._keeps_activations(rows.shape[0]) else kernels.w8a8_gemm
        out = gemm(rows, self.weight, self.weight_scale, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _keeps_activations(self, rows: int) -> bool:
        return self.scheme == "w8a16" or (self.scheme == "int8" and rows <= W8A16_MAX_ROWS)

    def load(self, param_name: str, tensor: torch.Tensor, shard: int = 0) -> None:
        """Copy a checkpoint tensor into `weight`, `weight_scale` or `bias`, or one shard of it.
        An unquantized weight (a float tensor) is refused: quantize the checkpoint first."""
        if param_name == "weight" and tensor.dtype != torch.int8:
            raise UnsupportedModelError(f"weight shard {shard}: expected int8, got {tensor.dtype}")
        load_shard(self, param_name, tensor, shard)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, shards={self.num_shards}, scheme={self.scheme}")
