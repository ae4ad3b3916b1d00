"""The engine alone against the same engine behind its worker and the gateway, in one run, at the
same loads: what the served path costs.

    python -m benchmarks.served_vs_engine [--model llama-3.1-8b-random] [--concurrency 1,64,256]
        [--input-len 512] [--output-len 128] [--duration 20] [--variants thread,process,inprocess]
        [--engine-arg=--max-model-len=4096 ...] [--out DIR]

1. Engine alone (a child process, so its memory is gone before the server starts): the engine's
   own step loop, closed loop at each concurrency (a finished request is replaced by a new one
   between two steps), random prompts of --input-len ids (plus the special tokens the gateway's
   tokenizer adds to a text, e.g. BOS: the same work), --output-len tokens each, EOS ignored;
   tok/s counts every token the window generated, TPOT and TTFT the requests that finished.
2. For each variant, `tandem serve --mode colocated` started fresh and `tandem bench --backend
   tandem` at each concurrency from outside, the same lengths and duration, greedy (temperature
   0, as the engine alone samples). Variants: `thread` (--launcher process: the worker a child
   process, its engine on a thread of it, the gateway calling it over loopback gRPC), `process`
   (the same with --engine-process: the engine in a process of its own, away from the worker's
   gRPC server), `inprocess` (--launcher inprocess: the worker on a thread of the serve process,
   the gateway calling it without gRPC, services/worker/local_calls.py).
   The serve process's CPU time over a point, per 1,000 streamed tokens: the gateway's cost per
   token, but for `inprocess` the gateway's and the worker's together (one process).

Printed: per concurrency and variant, output tok/s, TPOT p50 and TTFT p50 of both, the ratio
served / engine, and the serve process's CPU ms per 1,000 tokens. DIR/served_vs_engine.json
holds it.
CPU variant: --model tiny-random --engine-arg=--device=cpu with short lengths (RESULTS.md)."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.served import Server, served_prompt_len


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (its children not counted)."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- 1. the engine alone -----------------------------------------------------------------------
def engine_alone(args: argparse.Namespace) -> list[dict]:
    from services.engine.engine import LLMEngine
    from services.engine.sampling_params import SamplingParams
    from services.worker.cli import add_engine_arguments, engine_config_from_args
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    config = engine_config_from_args(parser.parse_args(["--model", args.model, *args.engine_arg]))
    import dataclasses
    engine = LLMEngine(dataclasses.replace(config, detokenize=False))
    engine.warm_up()
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    prompt_len = served_prompt_len(engine.tokenizer, args.input_len)    # BOS, as served
    rows = []
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        counter = iter(range(1 << 30))
        started: dict[str, float] = {}
        first: dict[str, float] = {}
        ttfts, tpots, tokens_done = [], [], 0

        def add() -> None:
            rid = f"c{concurrency}-{next(counter)}"
            engine.add_request(rid, [rng.randrange(1, vocab) for _ in range(prompt_len)], params)
            started[rid] = time.perf_counter()

        for _ in range(concurrency):
            add()
        begin = time.perf_counter()
        while time.perf_counter() - begin < args.duration:
            outputs = engine.step()
            now = time.perf_counter()
            for o in outputs:
                tokens_done += len(o.new_token_ids)
                if o.request_id not in first and o.new_token_ids:
                    first[o.request_id] = now
                if o.finished:
                    rid = o.request_id
                    ttfts.append(first[rid] - started.pop(rid))
                    tpots.append((now - first.pop(rid)) / max(1, args.output_len - 1))
                    add()
        wall = time.perf_counter() - begin
        for rid in list(started):
            engine.abort(rid)
        while engine.has_unfinished_requests():
            engine.step()
        rows.append({"concurrency": concurrency, "output_tok_s": tokens_done / wall,
                     "tpot_p50_ms": 1000 * statistics.median(tpots) if tpots else None,
                     "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else None,
                     "completed": len(tpots)})
        print(f"# engine alone, concurrency {concurrency}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


# --- 2. served ----------------------------------------------------------------------------------
def served(args: argparse.Namespace, variant: str, out: Path) -> list[dict]:
    extra = [*args.engine_arg, *(["--engine-process"] if variant == "process" else [])]
    launcher = "inprocess" if variant == "inprocess" else "process"
    server = Server(args.model, launcher, "colocated", extra, out / f"{variant}-serve.log")
    rows = []
    try:
        print(f"# served ({variant}): ready in {server.wait_ready(args.ready_timeout):.1f} s",
              file=sys.stderr, flush=True)
        for concurrency in args.concurrency.split(","):
            # Greedy, as the engine alone samples: the same work on both sides.
            load = ["--random-input-len", str(args.input_len),
                    "--random-output-len", str(args.output_len), "--temperature", "0",
                    "--sweep", f"concurrency:{concurrency}", "--duration", str(args.duration),
                    "--warmup-requests", "0"]
            cpu = _cpu_seconds(server.process.pid)
            doc = server.bench("tandem", load, out, f"{variant}-c{concurrency}")
            cpu = _cpu_seconds(server.process.pid) - cpu
            run = doc["runs"][0]
            tokens = run["total_output_tokens"]
            rows.append({"variant": variant, "concurrency": int(concurrency),
                         "output_tok_s": run["output_throughput"],
                         "tpot_p50_ms": run["median_tpot_ms"], "ttft_p50_ms": run["median_ttft_ms"],
                         "completed": run["completed"], "failed": run["failed"],
                         "gateway_cpu_ms_per_1k_tokens": 1e6 * cpu / tokens if tokens else None})
    finally:
        server.stop()
    return rows


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b-random")
    parser.add_argument("--concurrency", default="1,64,256")
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--variants", default="thread,process,inprocess")
    parser.add_argument("--engine-arg", action="append", default=[],
                        help="an engine flag for both the engine alone and the server, "
                             "e.g. --engine-arg=--max-model-len=4096")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--out", default="served-vs-engine")
    parser.add_argument("--engine-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_only:        # the child process of step 1
        Path(args.engine_only).write_text(json.dumps(engine_alone(args)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine_json = out / "engine.json"
    subprocess.run([sys.executable, "-m", "benchmarks.served_vs_engine", *sys.argv[1:],
                    "--engine-only", str(engine_json)], check=True)
    engine_rows = {r["concurrency"]: r for r in json.loads(engine_json.read_text())}
    served_rows = [r for v in args.variants.split(",") for r in served(args, v, out)]
    print(f"{'conc':>5} {'variant':<8} {'engine tok/s':>12} {'served tok/s':>12} {'ratio':>6} "
          f"{'TPOT eng':>9} {'TPOT srv':>9} {'TTFT eng':>9} {'TTFT srv':>9} "
          f"{'serve CPU ms/1k':>16}")
    for r in sorted(served_rows, key=lambda r: (r["concurrency"], r["variant"])):
        e = engine_rows[r["concurrency"]]
        print(f"{r['concurrency']:>5} {r['variant']:<8} {e['output_tok_s']:>12.0f} "
              f"{r['output_tok_s']:>12.0f} {_ratio(r['output_tok_s'], e['output_tok_s']):>6} "
              f"{e['tpot_p50_ms'] or 0:>9.2f} {r['tpot_p50_ms'] or 0:>9.2f} "
              f"{e['ttft_p50_ms'] or 0:>9.1f} {r['ttft_p50_ms'] or 0:>9.1f} "
              f"{r['gateway_cpu_ms_per_1k_tokens'] or 0:>16.1f}")
    (out / "served_vs_engine.json").write_text(json.dumps(
        {"args": vars(args), "engine": list(engine_rows.values()), "served": served_rows}, indent=1))


if __name__ == "__main__":
    main()
