"""Where an engine step's time goes, kernel by kernel: steady decode steps at a few batch sizes and
one prefill step of the step budget, on one GPU.

    python -m benchmarks.step_profile [--model llama-3.1-8b-random] [--batches 1,64,256]
        [--steps 10] [--prefill-prompts 16] [--prompt-len 512] [--json PATH]

Per decode batch: `batch` requests of --prompt-len random ids decode (greedy, EOS ignored) until
every prompt is in; then 40 steps timed by wall clock (median), and --steps more under the torch
profiler: the GPU's busy time per step (the union of its kernels' intervals) against the span,
kernel launches per step, and the kernels that take the most time. Prefill: --prefill-prompts
prompts at once (one step of their tokens when they fit the budget), profiled the same way.
The step as the engine runs it: graphs replayed after warm-up, the next step queued while the
GPU runs this one (engine.py)."""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.engine_gpu import _prompts, make_engine
from services.engine.engine import LLMEngine
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams

TOP_KERNELS = 12
TIMED_STEPS = 40


def _gpu_events(prof) -> list:
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def busy_us(events) -> tuple[float, float]:
    """(microseconds some kernel ran, microseconds from the first start to the last end)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    if not spans:
        return 0.0, 0.0
    busy, start, end = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > end:
            busy += end - start
            start, end = s, e
        else:
            end = max(end, e)
    return busy + end - start, spans[-1][1] - spans[0][0]


def kernel_table(events, steps: int) -> list[dict]:
    total: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        entry = total[e.name[:80]]
        entry[0] += 1
        entry[1] += e.time_range.end - e.time_range.start
    ranked = sorted(total.items(), key=lambda item: -item[1][1])[:TOP_KERNELS]
    return [{"kernel": name, "ms_per_step": us / steps / 1e3, "launches_per_step": n / steps}
            for name, (n, us) in ranked]


def profiled(engine: LLMEngine, steps: int) -> dict:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = _gpu_events(prof)
    busy, span = busy_us(events)
    return {"wall_ms_per_step": 1e3 * wall / steps, "gpu_busy_ms_per_step": busy / steps / 1e3,
            "gpu_span_ms_per_step": span / steps / 1e3, "kernels_per_step": len(events) / steps,
            "kernels": kernel_table(events, steps)}


def _drain(engine: LLMEngine) -> None:
    for request in [*engine.scheduler.running, *engine.scheduler.waiting]:
        engine.abort(request.request_id)
    while engine.has_unfinished_requests():
        engine.step()


def decode_profile(engine: LLMEngine, batch: int, prompt_len: int, steps: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=TIMED_STEPS + steps + 64, ignore_eos=True)
    for i, prompt in enumerate(_prompts(batch, prompt_len, engine.model_config.vocab_size,
                                        7000 + batch)):
        engine.add_request(f"d{batch}-{i}", prompt, params)
    scheduler = engine.scheduler
    while scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens
                                   for r in scheduler.running):
        engine.step()
    for _ in range(5):
        engine.step()
    walls = []
    for _ in range(TIMED_STEPS):
        start = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - start)
    result = {"batch": batch, "step_wall_ms_p50": 1e3 * statistics.median(walls),
              **profiled(engine, steps)}
    _drain(engine)
    return result


def prefill_profile(engine: LLMEngine, prompts: int, prompt_len: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    for rep in range(2):            # the first round loads what a step of this size uses
        for i, prompt in enumerate(_prompts(prompts, prompt_len, vocab, 9000 + rep)):
            engine.add_request(f"p{rep}-{i}", prompt, params)
        if rep == 0:
            while engine.has_unfinished_requests():
                engine.step()
    # One call: the prefill step, and the decode step it queues behind itself.
    result = {"prompts": prompts, "prompt_len": prompt_len, **profiled(engine, 1)}
    _drain(engine)
    return result


def _print(title: str, row: dict) -> None:
    wall = row.get("step_wall_ms_p50", row["wall_ms_per_step"])
    print(f"\n## {title}: step {wall:.2f} ms wall; GPU busy {row['gpu_busy_ms_per_step']:.2f} of "
          f"{row['gpu_span_ms_per_step']:.2f} ms; {row['kernels_per_step']:.0f} kernels a step")
    for k in row["kernels"]:
        print(f"   {k['ms_per_step']:8.3f} ms  x{k['launches_per_step']:6.1f}  {k['kernel']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b-random")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--prefill-prompts", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    engine, warm_s = make_engine(load_model(args.model, device=device))
    print(f"# {torch.cuda.get_device_name(device)}, {time.strftime('%Y-%m-%d')}, warm-up "
          f"{warm_s:.1f} s, {engine.runner.num_graphs} graphs", flush=True)
    report = {"device": torch.cuda.get_device_name(device), "date": time.strftime("%Y-%m-%d"),
              "decode": [], "prefill": None}
    for batch in (int(b) for b in args.batches.split(",")):
        row = decode_profile(engine, batch, args.prompt_len, args.steps)
        report["decode"].append(row)
        _print(f"decode, batch {batch}", row)
    if args.prefill_prompts:
        row = prefill_profile(engine, args.prefill_prompts, args.prompt_len)
        report["prefill"] = row
        _print(f"prefill, {args.prefill_prompts} x {args.prompt_len}", row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
