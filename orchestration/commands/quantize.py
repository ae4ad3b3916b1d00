"""`tandem quantize`: write a quantized checkpoint of a model (a preset or an HF checkpoint dir).

Every decoder projection (q/k/v/o, gate/up/down) is quantized; embeddings, norms, biases and the
LM head keep the checkpoint's dtype. The tokenizer files travel along, so the directory serves
as it is: `tandem serve --model DIR`.

- w8a16 / w8a8 / int8: symmetric per output channel, `<name>.weight` int8 [out, in] and
  `<name>.weight_scale` fp32 [out] (the rule of kernels/quantize_rows.py); config.json gains
  `quantization_config` = {"quant_method": "tandem-int8", "scheme": ...}.
- gptq-w4a16 / awq-w4a16: 4-bit round-to-nearest in groups of --group-size input channels
  (model/int4_rtn.py), written in the published GPTQ (v1) or AWQ (GEMM) layout with the
  quantization_config those tools write (model/int4_layouts.py), so they can load it too; GPTQ's
  quantize_config.json (AutoGPTQ's own file) is written beside it."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from kernels.quantize_rows import quantize_rows
from services.engine.errors import ConfigError
from services.engine.loader import PRESETS, model_source
from services.engine.model.hf_config import checkpoint_dtype, model_config_from_hf
from services.engine.model.int4_layouts import awq_tensors, gptq_tensors
from services.engine.model.int4_rtn import quantize_awq_rtn, quantize_gptq_rtn
from services.engine.model.quantized_linear import QUANT_METHOD, QUANTIZED_PROJECTIONS, SCHEMES

INT4_SCHEMES = ("gptq-w4a16", "awq-w4a16")
ALL_SCHEMES = SCHEMES + INT4_SCHEMES
SHARD_BYTES = 2 * 2**30
_WEIGHT_FILES = ("config.json", "model.safetensors.index.json", "quantize_config.json",
                 "quant_config.json")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-random",
                        help="a preset (%s) or an HF checkpoint directory" % ", ".join(PRESETS))
    parser.add_argument("--out", required=True, help="directory to write (must not exist yet)")
    parser.add_argument("--scheme", choices=ALL_SCHEMES, default="w8a16",
                        help="w8a16: int8 weights, 16-bit activations; w8a8: activations "
                             "quantized per token at run time too; int8: w8a16 for decode's "
                             "few rows, w8a8 for prefill and large batches; gptq-w4a16 / awq-w4a16: "
                             "4-bit weights in groups, in the GPTQ or AWQ checkpoint layout")
    parser.add_argument("--group-size", type=int, default=128,
                        help="4-bit schemes: input channels per scale and zero (GPTQ: -1 for "
                             "one group per row)")
    parser.add_argument("--asymmetric", action="store_true",
                        help="gptq-w4a16: a zero point per group (AWQ always has one)")
    parser.add_argument("--device", default="cpu",
                        help="where to draw preset weights and quantize (cpu or cuda)")


def run(args: argparse.Namespace) -> int:
    out = write_quantized_checkpoint(args.model, Path(args.out), args.scheme,
                                     torch.device(args.device), group_size=args.group_size,
                                     sym=not args.asymmetric)
    print(f"wrote {args.scheme} checkpoint of {args.model} to {out}")
    return 0


def is_quantized_projection(name: str) -> bool:
    module, _, param = name.rpartition(".")
    return (param == "weight" and name.startswith("model.layers.")
            and module.rpartition(".")[2] in QUANTIZED_PROJECTIONS)


def write_int8_checkpoint(model: str, out: Path, scheme: str,
                          device: torch.device = torch.device("cpu"),
                          shard_bytes: int = SHARD_BYTES) -> Path:
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return write_quantized_checkpoint(model, out, scheme, device, shard_bytes)


def write_quantized_checkpoint(model: str, out: Path, scheme: str,
                               device: torch.device = torch.device("cpu"),
                               shard_bytes: int = SHARD_BYTES, group_size: int = 128,
                               sym: bool = True) -> Path:
    if scheme not in ALL_SCHEMES:
        raise ConfigError(f"scheme must be one of {ALL_SCHEMES}, got {scheme!r}")
    if scheme in INT4_SCHEMES and not (group_size > 0 or (group_size == -1
                                                           and scheme == "gptq-w4a16")):
        raise ConfigError(f"--group-size must be > 0 (or -1 for gptq-w4a16), got {group_size}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty")
    source = model_source(model)
    dtype = checkpoint_dtype(source.hf_config)
    config = model_config_from_hf(source.hf_config, dtype)
    out.mkdir(parents=True, exist_ok=True)

    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_size, total = 0, 0

    def flush() -> None:
        nonlocal shard, shard_size
        if shard:
            name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
            shard, shard_size = {}, 0

    for name, tensor in source.weights(config, device):
        if is_quantized_projection(name):
            tensors = quantized_tensors(name, tensor.to(device).float(), scheme, group_size, sym)
        else:
            tensors = {name: tensor.to(_DTYPES[dtype])}
        for key, value in tensors.items():
            value = value.contiguous().cpu()
            size = value.numel() * value.element_size()
            if shard and shard_size + size > shard_bytes:
                flush()
            shard[key] = value
            shard_size += size
            total += size
    flush()

    hf_config = dict(source.hf_config)
    hf_config["quantization_config"] = quantization_config(scheme, group_size, sym)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
    if scheme == "gptq-w4a16":
        (out / "quantize_config.json").write_text(
            json.dumps(hf_config["quantization_config"], indent=2), encoding="utf-8")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    _write_tokenizer(model, source, out)
    return out


def quantized_tensors(name: str, weight: torch.Tensor, scheme: str, group_size: int,
                      sym: bool) -> dict[str, torch.Tensor]:
    """One projection's `<module>.weight` [out, in] -> the tensors the scheme stores for it."""
    if scheme in SCHEMES:
        codes, scales = quantize_rows(weight)
        return {name: codes, name + "_scale": scales}
    module = name.removesuffix(".weight")
    size = weight.shape[1] if group_size == -1 else group_size
    if scheme == "gptq-w4a16":
        groups = quantize_gptq_rtn(weight, size, sym)
        g_idx = torch.arange(weight.shape[1], device=weight.device) // size
        tensors = gptq_tensors(groups.codes, groups.zeros, groups.scales, g_idx)
    else:
        try:
            groups = quantize_awq_rtn(weight, size)
        except ValueError as e:
            raise ConfigError(f"--group-size {group_size}: {e}") from None
        tensors = awq_tensors(groups.codes, groups.zeros, groups.scales)
    return {f"{module}.{key}": value for key, value in tensors.items()}


def quantization_config(scheme: str, group_size: int, sym: bool) -> dict:
    """config.json's quantization_config, with the fields the ecosystem's tools write: the INT8
    schemes' own; transformers' GPTQConfig / AutoGPTQ's BaseQuantizeConfig; AwqConfig."""
    if scheme == "gptq-w4a16":
        return {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": False,
                "sym": sym, "static_groups": False, "true_sequential": True,
                "damp_percent": 0.01, "checkpoint_format": "gptq", "model_name_or_path": None,
                "model_file_base_name": None,
                "meta": {"quantizer": ["tandem"], "method": "round-to-nearest"}}
    if scheme == "awq-w4a16":
        return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    return {"quant_method": QUANT_METHOD, "scheme": scheme, "bits": 8, "symmetric": True,
            "granularity": "per_output_channel", "modules": list(QUANTIZED_PROJECTIONS)}


def _write_tokenizer(model: str, source, out: Path) -> None:
    """A checkpoint directory's tokenizer and generation files are copied as they are; a preset's
    tokenizer is written out in the same HF form."""
    if model not in PRESETS:
        for path in Path(model).iterdir():
            if path.is_file() and path.suffix != ".safetensors" and path.name not in _WEIGHT_FILES:
                shutil.copy2(path, out / path.name)
        return
    tokenizer = source.tokenizer
    tokenizer.backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": tokenizer.chat_template, "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token}), encoding="utf-8")
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": list(source.eos_token_ids)}), encoding="utf-8")
