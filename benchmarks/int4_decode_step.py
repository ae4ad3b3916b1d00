"""Batch-1 decode step of a Llama-3.1-8B-shaped model (the `llama-3.1-8b-random` preset) with
bf16, INT8 (W8A16) and INT4 (GPTQ layout, group 128) projection weights, in one run on one GPU.

    python -m benchmarks.int4_decode_step [--context 1024] [--out int4_decode_step.json]

The INT4 and INT8 models get their weights from the same seeded bf16 stream, quantized on the GPU
by the code `tandem quantize` runs (round to nearest) and loaded through the checkpoint loader's
Projection.load path, without writing a checkpoint. The step is one token's forward plus the
logits, over a KV cache holding `context` tokens, timed as benchmarks/kernels.py times an op: a
CUDA graph of the step replayed (no Python launch overhead), the median of 5 trials, with the
one-row GEMV on as in an engine that captures graphs; when the step cannot be captured it is
timed eagerly by do_bench and the row says so."""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import triton

from benchmarks.measure import time_ms
from orchestration.commands.quantize import is_quantized_projection, quantized_tensors
from services.engine.config import Int4Scheme
from services.engine.loader import model_source
from services.engine.model.hf_config import model_config_from_hf
from services.engine.model.linear import use_one_row_gemv
from services.engine.model.registry import build_model
from tests.helpers.paged_batch import PagedHarness, PagedSequence, build_batch

PRESET = "llama-3.1-8b-random"
VARIANTS = {"bf16": None, "w8a16": "w8a16", "int8": "int8",
            "gptq-w4a16": Int4Scheme("gptq", 128, zeros_minus_one=True)}


def build(variant: str, device: torch.device, preset: str = PRESET):
    source = model_source(preset)
    config = model_config_from_hf(source.hf_config, "bfloat16").replace(
        quantization=VARIANTS[variant])
    with torch.device(device):
        model = build_model(config)

    def stream():
        for name, tensor in source.weights(config, device):
            if variant != "bf16" and is_quantized_projection(name):
                yield from quantized_tensors(name, tensor.float(), variant, 128, True).items()
            else:
                yield name, tensor.to(torch.bfloat16)

    model.load_weights(stream())
    use_one_row_gemv(model)         # as an engine that captures graphs runs its one-row steps
    return model.eval(), config


def decode_step_ms(model, config, context: int) -> tuple[float, bool]:
    harness = PagedHarness(model, config, block_size=16, num_blocks=context // 16 + 8)
    seq = PagedSequence(list(range(1, context + 1)))
    harness.step([(seq, context - 1)])                       # the prompt's K/V into the pages
    input_ids, positions, meta = build_batch([(seq, 1)], 16, harness.kv_cache.device)

    def step():
        hidden = model(input_ids, positions, harness.kv_cache, meta)
        return model.compute_logits(hidden)

    with torch.inference_mode():
        step()
        graph_ok = True
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        except RuntimeError:
            graph_ok = False
        torch.cuda.synchronize()
        return time_ms(step), graph_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--model", default=PRESET, help="a preset (default %(default)s)")
    parser.add_argument("--out", default="int4_decode_step.json")
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for variant in VARIANTS:
        model, config = build(variant, device, args.model)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        ms, graphed = decode_step_ms(model, config, args.context)
        rows.append(dict(variant=variant, ms=ms, graphed=graphed, weight_gb=weight_bytes / 1e9))
        del model
        torch.cuda.empty_cache()
    base = rows[0]["ms"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{torch.cuda.get_device_name()}, {stamp}, torch {torch.__version__}, "
          f"triton {triton.__version__}; batch 1, context {args.context}")
    for row in rows:
        row["of_bf16"] = row["ms"] / base
        print(f"{row['variant']:12} {row['ms'] * 1e3:9.1f} us  {row['of_bf16']:.3f}x bf16  "
              f"weights {row['weight_gb']:.2f} GB  {'graph' if row['graphed'] else 'eager'}")
    with open(args.out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), date=stamp, context=args.context,
                       torch=torch.__version__, triton=triton.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
