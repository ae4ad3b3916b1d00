"""config.json's `quantization_config` for GPTQ and AWQ checkpoints -> an Int4Scheme, with the
fields and spellings the tools that write them use:

- GPTQ (transformers' GPTQConfig, Optimum, AutoGPTQ, GPTQModel): quant_method "gptq", bits,
  group_size (-1: one group per row), sym, desc_act, checkpoint_format ("gptq" = v1, the default,
  or "gptq_v2"), optionally pack_dtype and modules_in_block_to_quantize; older AutoGPTQ wrote
  is_marlin_format for Marlin-repacked weights.
- AWQ (transformers' AwqConfig, AutoAWQ): quant_method "awq", bits (w_bit), group_size
  (q_group_size), zero_point, version ("gemm"; AutoAWQ spells it "GEMM"), modules_to_not_convert.

Only what the W4A16 kernel serves is accepted: 4 bits, int32 packing, GPTQ's plain and v2 layouts,
AWQ's GEMM layout with zero points, every decoder projection quantized. Anything else is refused
naming the field and the value found. sym and desc_act change no tensor shape: symmetric
checkpoints store their constant zeros like any other, and act order is read from g_idx.
Checkpoints older than transformers' support carry the config in the tools' own file instead
(AutoGPTQ's quantize_config.json, AutoAWQ's quant_config.json); the loader reads those too."""

from __future__ import annotations

from typing import Any

from services.engine.config import Int4Scheme
from services.engine.errors import UnsupportedModelError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPTQ_FORMATS = ("gptq", "gptq_v2")


def _refuse(field: str, value: Any, supported: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"quantization_config.{field}={value!r} is not supported "
                                 f"({supported})")


def _field(spec: dict[str, Any], names: tuple[str, ...], default: Any) -> tuple[str, Any]:
    for name in names:
        if name in spec and spec[name] is not None:
            return name, spec[name]
    return names[0], default


def _bits(spec: dict[str, Any], names: tuple[str, ...]) -> None:
    name, bits = _field(spec, names, 4)
    if bits != 4:
        raise _refuse(name, bits, "4-bit weights only")


def _group_size(spec: dict[str, Any], names: tuple[str, ...], allow_row: bool) -> int | None:
    name, size = _field(spec, names, 128)
    if allow_row and size == -1:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise _refuse(name, size, "a positive group size" + (" or -1" if allow_row else ""))
    return size


def gptq_scheme(spec: dict[str, Any]) -> Int4Scheme:
    _bits(spec, ("bits",))
    if spec.get("is_marlin_format"):
        raise _refuse("is_marlin_format", True, "Marlin-repacked weights are not read")
    fmt = str(spec.get("checkpoint_format") or "gptq").lower()
    if fmt not in GPTQ_FORMATS:
        raise _refuse("checkpoint_format", spec.get("checkpoint_format"),
                      f"one of {GPTQ_FORMATS}; Marlin, BitBLAS and other repacked layouts are not")
    pack_dtype = spec.get("pack_dtype", "int32")
    if str(pack_dtype).removeprefix("torch.") != "int32":
        raise _refuse("pack_dtype", pack_dtype, "int32 packing only")
    blocks = spec.get("modules_in_block_to_quantize")
    if blocks:
        listed = {name.rpartition(".")[2] for group in blocks for name in group}
        left = [p for p in PROJECTIONS if p not in listed]
        if left:
            raise _refuse("modules_in_block_to_quantize", blocks,
                          f"every decoder projection must be quantized; {left} are not")
    return Int4Scheme("gptq", _group_size(spec, ("group_size",), allow_row=True),
                      zeros_minus_one=fmt == "gptq")


def awq_scheme(spec: dict[str, Any]) -> Int4Scheme:
    _bits(spec, ("bits", "w_bit"))
    name, version = _field(spec, ("version",), "gemm")
    if str(version).lower() != "gemm":
        raise _refuse(name, version, "the GEMM layout only; GEMV, Marlin, ExLlama and IPEX "
                                     "layouts are not read")
    name, zero_point = _field(spec, ("zero_point",), True)
    if zero_point is not True:
        raise _refuse(name, zero_point, "zero_point=true only")
    skipped = spec.get("modules_to_not_convert") or []
    kept = [p for p in PROJECTIONS if any(s.rpartition(".")[2] == p for s in skipped)]
    if kept:
        raise _refuse("modules_to_not_convert", skipped,
                      f"every decoder projection must be quantized; {kept} are not")
    return Int4Scheme("awq", _group_size(spec, ("group_size", "q_group_size"), allow_row=False))


INT4_METHODS = {"gptq": gptq_scheme, "awq": awq_scheme}
# The tools' own files beside config.json, for checkpoints whose config.json has no
# quantization_config (made before transformers read these formats): AutoGPTQ's and AutoAWQ's.
SIDE_FILES = {"quantize_config.json": "gptq", "quant_config.json": "awq"}


def side_file_quantization_config(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A SIDE_FILES file's contents as a quantization_config (older AutoGPTQ wrote no
    quant_method)."""
    return {"quant_method": SIDE_FILES[name], **spec}


def int4_scheme(spec: dict[str, Any]) -> Int4Scheme:
    """quantization_config of quant_method "gptq" or "awq" -> its Int4Scheme."""
    return INT4_METHODS[spec["quant_method"]](spec)
