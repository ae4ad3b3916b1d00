"""`tandem quantize`: write an INT8 checkpoint of a model (a preset or an HF checkpoint dir).

Every decoder projection (q/k/v/o, gate/up/down) is quantized symmetrically per output channel:
`<name>.weight` becomes int8 [out, in] and `<name>.weight_scale` fp32 [out] (the rule of
kernels/quantize_rows.py); embeddings, norms, biases and the LM head keep the checkpoint's dtype.
config.json gains `quantization_config` = {"quant_method": "tandem-int8", "scheme": ...}, which
the loader reads to build INT8 projections. The tokenizer files travel along, so the directory
serves as it is: `tandem serve --model DIR`."""

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
from services.engine.model.quantized_linear import QUANT_METHOD, QUANTIZED_PROJECTIONS, SCHEMES

SHARD_BYTES = 2 * 2**30
_WEIGHT_FILES = ("config.json", "model.safetensors.index.json")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-random",
                        help="a preset (%s) or an HF checkpoint directory" % ", ".join(PRESETS))
    parser.add_argument("--out", required=True, help="directory to write (must not exist yet)")
    parser.add_argument("--scheme", choices=SCHEMES, default="w8a16",
                        help="w8a16: int8 weights, 16-bit activations; w8a8: activations "
                             "quantized per token at run time too")
    parser.add_argument("--device", default="cpu",
                        help="where to draw preset weights and quantize (cpu or cuda)")


def run(args: argparse.Namespace) -> int:
    out = write_int8_checkpoint(args.model, Path(args.out), args.scheme, torch.device(args.device))
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
            codes, scales = quantize_rows(tensor.to(device).float())
            tensors = {name: codes, name + "_scale": scales}
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
    hf_config["quantization_config"] = {
        "quant_method": QUANT_METHOD, "scheme": scheme, "bits": 8, "symmetric": True,
        "granularity": "per_output_channel", "modules": list(QUANTIZED_PROJECTIONS)}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    _write_tokenizer(model, source, out)
    return out


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
