"""INT4 projections: the Projection contract of linear.py (shards, `load`) for GPTQ and AWQ
checkpoints, multiplied through the W4A16 kernel.

Parameters carry the checkpoint's names (`qweight`, `qzeros`, `scales`, and `g_idx` for GPTQ),
so the model's loader fills them like any other; each tensor is turned into the kernel's layout
as it loads (int4_layouts.py), shard by shard along the output. A fused projection (q|k|v,
gate|up) has one g_idx for all its shards: the shards read the same input, so GPTQ's act-order
permutation is the same for each, and a checkpoint where they differ is refused.

Act order (a g_idx other than k // group_size): when every group holds group_size channels, as
GPTQ's desc_act lays them out, the packed rows are sorted by group as they load (qweight before
or after g_idx, whichever comes first) and `input_perm` tells the kernel which input channel
each row multiplies, so groups are contiguous and the kernel runs its plain path. Otherwise the
kernel gathers each row's group through g_idx."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import kernels
from kernels.w4a16_gemm import PACK, num_groups, unpack_int4_rows
from services.engine.config import Int4Scheme
from services.engine.errors import UnsupportedModelError
from services.engine.model.int4_layouts import TENSORS, pack_int4_rows, to_kernel_layout
from services.engine.model.shards import load_shard, shard_offsets


def _parameter(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class Int4Linear(nn.Module):
    """y = x W^T + b with W in 4-bit groups. out_features is one size, or the sizes of the
    shards laid end to end; every size (and in_features) a multiple of 8, the packing unit."""

    def __init__(self, in_features: int, out_features: int | Sequence[int], scheme: Int4Scheme,
                 bias: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.scheme = scheme
        self.shard_offsets = shard_offsets(out_features)
        sizes = [in_features] + [b - a for a, b in zip(self.shard_offsets, self.shard_offsets[1:])]
        if any(size % PACK for size in sizes):
            raise UnsupportedModelError(f"{scheme.name}: projection sizes {sizes} must be "
                                        f"multiples of {PACK}")
        self.in_features, self.out_features = in_features, self.shard_offsets[-1]
        self.num_shards = len(self.shard_offsets) - 1
        self.group_size = scheme.group_size or in_features
        self.num_groups = num_groups(in_features, self.group_size)
        n = self.out_features
        self.qweight = _parameter(in_features // PACK, n, dtype=torch.int32)
        self.qzeros = _parameter(self.num_groups, n // PACK, dtype=torch.int32)
        self.scales = _parameter(self.num_groups, n, dtype=torch.float16)
        if scheme.method == "gptq":
            self.g_idx = _parameter(in_features, dtype=torch.int32)
        self.bias = _parameter(n, dtype=dtype) if bias else None
        self.act_order = False        # g_idx is not k // group_size
        self.register_buffer("input_perm", None, persistent=False)   # rows sorted by group
        self._g_idx: torch.Tensor | None = None   # the first shard's, to compare the others'
        self._unsorted_shards: set[int] = set()   # qweight shards loaded before g_idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        gathered = self.act_order and self.input_perm is None
        out = kernels.w4a16_gemm(rows, self.qweight, self.qzeros, self.scales, self.group_size,
                                 self.g_idx if gathered else None, self.bias, self.input_perm)
        return out.reshape(*x.shape[:-1], self.out_features)

    def load(self, param_name: str, tensor: torch.Tensor, shard: int = 0) -> None:
        """Copy one checkpoint tensor (published layout) into one shard, in the kernel's."""
        if param_name == "bias" or param_name not in TENSORS[self.scheme.method]:
            if param_name == "weight":
                raise UnsupportedModelError(f"an unquantized weight in a {self.scheme.name} "
                                            f"checkpoint: every decoder projection must be 4-bit")
            load_shard(self, param_name, tensor, shard)
            return
        start, end = self.shard_offsets[shard], self.shard_offsets[shard + 1]
        value = to_kernel_layout(self.scheme, param_name, tensor, self.in_features, end - start,
                                 self.num_groups)
        if param_name == "g_idx":
            self._load_g_idx(value)
            return
        columns = slice(start // PACK, end // PACK) if param_name == "qzeros" else slice(start, end)
        target = getattr(self, param_name).data[:, columns]
        target.copy_(value)
        if param_name == "qweight":
            if self.input_perm is not None:
                self._sort_rows(target)
            elif self._g_idx is None:
                self._unsorted_shards.add(shard)

    def _load_g_idx(self, g_idx: torch.Tensor) -> None:
        g_idx = g_idx.cpu()
        if self._g_idx is not None:
            if not torch.equal(g_idx, self._g_idx):
                raise UnsupportedModelError("g_idx differs between the shards of a fused "
                                            "projection (q|k|v or gate|up)")
            return
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= self.num_groups:
            raise UnsupportedModelError(f"g_idx: group indices must lie in [0, {self.num_groups})")
        self._g_idx = g_idx
        sequential = torch.arange(self.in_features, dtype=torch.int32) // self.group_size
        self.act_order = not torch.equal(g_idx, sequential)
        self.g_idx.data.copy_(g_idx)
        order = torch.sort(g_idx, stable=True).indices
        if self.act_order and torch.equal(g_idx[order], sequential):
            self.input_perm = order.to(torch.int32).to(self.qweight.device)
            for shard in self._unsorted_shards:
                start, end = self.shard_offsets[shard], self.shard_offsets[shard + 1]
                self._sort_rows(self.qweight.data[:, start:end])
        self._unsorted_shards.clear()

    def _sort_rows(self, packed: torch.Tensor) -> None:
        """Reorder a shard's packed rows in place: row j becomes input channel input_perm[j]."""
        codes = unpack_int4_rows(packed)[self.input_perm.long()]
        packed.copy_(pack_int4_rows(codes))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, shards={self.num_shards}, "
                f"scheme={self.scheme.name}, group_size={self.group_size}, "
                f"act_order={self.act_order}, sorted={self.input_perm is not None}")
