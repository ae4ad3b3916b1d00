"""The tensor layouts of GPTQ and AWQ 4-bit checkpoints, and the one layout the W4A16 kernel
reads (kernels/w4a16_gemm.py), in both directions: checkpoint -> kernel when a model loads,
codes -> checkpoint when `tandem quantize` writes one.

For a projection with K input and N output channels and G groups, as the formats are published:

- GPTQ (AutoGPTQ, Optimum, transformers, GPTQModel): `qweight` int32 [K/8, N], eight input
  channels per word, channel 8r+i in bits 4i..4i+3; `qzeros` int32 [G, N/8], eight output
  channels per word in the same sequential order; `scales` fp16 [G, N]; `g_idx` int32 [K], the
  group of each input channel (a permutation of k // group_size under desc_act). Checkpoint
  format "gptq" (v1) stores each zero minus one and its readers add the one back, masked to four
  bits as AutoGPTQ's torch kernel does (so a stored 15, an AutoGPTQ zero of 0 that wrapped,
  reads as 0); "gptq_v2" stores the zero itself.
- AWQ, GEMM version (AutoAWQ, transformers): `qweight` int32 [K, N/8], eight output channels per
  word in the interleaved order AWQ_ORDER (nibble i holds channel 8c + AWQ_ORDER[i]); `qzeros`
  int32 [G, N/8], packed the same way, the zero itself; `scales` fp16 [G, N]; no g_idx (the
  group of channel k is k // group_size).

Either way W[n, k] = (code - zero) * scale. The kernel takes GPTQ's packing with true zeros (v2),
so only AWQ's qweight and qzeros and GPTQ v1's qzeros are rewritten at load."""

from __future__ import annotations

import torch

from kernels.w4a16_gemm import PACK, unpack_int4_cols
from services.engine.config import Int4Scheme
from services.engine.errors import UnsupportedModelError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SEQUENTIAL = tuple(range(PACK))
TENSORS = {"gptq": ("qweight", "qzeros", "scales", "g_idx"), "awq": ("qweight", "qzeros", "scales")}


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 -> the same bits as int32."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_int4_rows(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [K, C] -> int32 [K/8, C]: row 8r + i into bits 4i.. of row r."""
    k, c = codes.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=codes.device)
    grouped = codes.to(torch.int64).reshape(k // PACK, PACK, c)
    return _to_int32((grouped << shifts[None, :, None]).sum(dim=1))


def pack_int4_cols(codes: torch.Tensor, order: tuple[int, ...] = SEQUENTIAL) -> torch.Tensor:
    """Codes 0..15 [R, N] -> int32 [R, N/8]: nibble i of word c holds column 8c + order[i]."""
    r, n = codes.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=codes.device)
    grouped = codes.to(torch.int64).reshape(r, n // PACK, PACK)[:, :, list(order)]
    return _to_int32((grouped << shifts[None, None, :]).sum(dim=2))


def unpack_int4_cols_ordered(packed: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """The inverse of pack_int4_cols: int32 [R, N/8] -> codes [R, N]."""
    nibbles = unpack_int4_cols(packed).reshape(packed.shape[0], packed.shape[1], PACK)
    codes = torch.empty_like(nibbles)
    codes[:, :, list(order)] = nibbles
    return codes.reshape(packed.shape[0], packed.shape[1] * PACK)


def checkpoint_shapes(method: str, k: int, n: int, groups: int) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of one projection (or one shard of it) as published."""
    if method == "gptq":
        return {"qweight": (k // PACK, n), "qzeros": (groups, n // PACK), "scales": (groups, n),
                "g_idx": (k,)}
    return {"qweight": (k, n // PACK), "qzeros": (groups, n // PACK), "scales": (groups, n)}


def to_kernel_layout(scheme: Int4Scheme, name: str, tensor: torch.Tensor, k: int, n: int,
                     groups: int) -> torch.Tensor:
    """One checkpoint tensor of a [n out, k in] projection shard -> the kernel's layout."""
    expected = checkpoint_shapes(scheme.method, k, n, groups)
    if name not in expected:
        raise UnsupportedModelError(f"{scheme.method} projections have no tensor {name!r} "
                                    f"(expected {', '.join(expected)})")
    if tuple(tensor.shape) != expected[name]:
        raise UnsupportedModelError(f"{name}: checkpoint shape {tuple(tensor.shape)}, the "
                                    f"{scheme.name} layout expects {expected[name]}")
    if name == "scales":
        if not tensor.is_floating_point():
            raise UnsupportedModelError(f"scales: expected a float tensor, got {tensor.dtype}")
        return tensor
    if tensor.dtype != torch.int32:
        raise UnsupportedModelError(f"{name}: expected int32 (packed 4-bit), got {tensor.dtype}; "
                                    f"other pack dtypes are not supported")
    if name == "g_idx":
        return tensor
    if scheme.method == "awq":
        codes = unpack_int4_cols_ordered(tensor, AWQ_ORDER)
        return pack_int4_rows(codes) if name == "qweight" else pack_int4_cols(codes)
    if name == "qzeros" and scheme.zeros_minus_one:
        return pack_int4_cols((unpack_int4_cols(tensor) + 1) & 0xF)
    return tensor


def gptq_tensors(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                 g_idx: torch.Tensor, zeros_minus_one: bool = True) -> dict[str, torch.Tensor]:
    """codes [K, N] and zeros [G, N] in 0..15 (zeros >= 1 for v1), scales [G, N], g_idx [K]
    -> a projection's GPTQ tensors (v1 unless zeros_minus_one is False)."""
    if zeros_minus_one and int(zeros.min()) < 1:
        raise ValueError("GPTQ v1 cannot store a zero of 0 unambiguously")
    stored = zeros - 1 if zeros_minus_one else zeros
    return {"qweight": pack_int4_rows(codes), "qzeros": pack_int4_cols(stored),
            "scales": scales.to(torch.float16), "g_idx": g_idx.to(torch.int32)}


def awq_tensors(codes: torch.Tensor, zeros: torch.Tensor,
                scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """codes [K, N], zeros [G, N] in 0..15, scales [G, N] -> a projection's AWQ GEMM tensors."""
    return {"qweight": pack_int4_cols(codes, AWQ_ORDER), "qzeros": pack_int4_cols(zeros, AWQ_ORDER),
            "scales": scales.to(torch.float16)}
