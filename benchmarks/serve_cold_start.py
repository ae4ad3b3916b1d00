"""Cold start against warm: a fresh `tandem serve`, hit at once by --concurrency streams the moment
it says it is ready, against the same load on the same server right after. With a warm-up before
"ready", the two TTFTs agree (issue target: cold median within 20% of warm).

    python -m benchmarks.serve_cold_start --model llama-3.1-8b-random --setup colocated \\
        --concurrency 32 --input-len 512 --output-len 128 [--servers 3] [--warm-runs 2]

Every run sends prompts of its own (the dataset seed differs per run): a warm run that sent the
cold run's prompts again would find them in the prefix cache and measure a cache hit, not warmth.
`--servers` starts that many fresh servers one after the other (the cold figure is noisy: one
sample per server). Prints, per server, the start-up time (launch until /health answers 200),
TTFT median / p90 and output tok/s of its cold run and of each warm run; then the cold/warm
ratio of the TTFT medians (median over servers of the cold medians, over all warm runs of the
warm ones). Results: DIR/serve_cold_start.json, server logs DIR/server-N.log."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.served import Server  # noqa: E402
from loadgen.backends import BackendConfig  # noqa: E402
from loadgen.bench import BenchPlan, OutputSpec, run_bench  # noqa: E402
from loadgen.datasets import DatasetSpec  # noqa: E402
from loadgen.load_pattern import LoadSpec  # noqa: E402


def measure(url: str, args: argparse.Namespace, seed: int) -> dict:
    """One burst of --concurrency requests, all sent at once, with prompts drawn from `seed`."""
    plan = BenchPlan(
        backend=BackendConfig(kind="openai", base_url=url, ignore_eos=True),
        dataset=DatasetSpec(random_input_len=args.input_len, random_output_len=args.output_len,
                            seed=seed),
        load=LoadSpec(max_concurrency=args.concurrency, num_prompts=args.concurrency,
                      warmup_requests=0, request_timeout_s=600.0, seed=seed),
        tokenizer=args.model, output=OutputSpec(show_progress=False, plots=False))
    with open(os.devnull, "w") as quiet:
        result, _ = run_bench(plan, out=quiet)
    summary = result.points[0].summary
    if summary["completed"] != args.concurrency:
        raise RuntimeError(f"{summary['failed']} of {args.concurrency} requests failed: "
                           f"{summary['errors_by_code']}")
    return {"ttft_p50_ms": summary["median_ttft_ms"], "ttft_p90_ms": summary["p90_ttft_ms"],
            "output_tok_s": summary["output_throughput"]}


def one_server(index: int, args: argparse.Namespace, out: Path) -> dict:
    server = Server(args.model, args.launcher, args.setup, args.serve_arg,
                    out / f"server-{index}.log")
    try:
        ready_s = server.wait_ready(args.ready_timeout)
        url = f"http://127.0.0.1:{server.http_port}"
        runs = [measure(url, args, seed=1000 * index + run) for run in range(1 + args.warm_runs)]
    finally:
        server.stop()
    return {"ready_s": ready_s, "cold": runs[0], "warm": runs[1:]}


def _line(name: str, run: dict) -> str:
    return (f"    {name}: TTFT median {run['ttft_p50_ms']:.1f} ms, p90 {run['ttft_p90_ms']:.1f} ms; "
            f"{run['output_tok_s']:.0f} output tok/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--setup", default="1p1d",
                   help="colocated, Ncolocated or NpMd (N prefill, M decode workers)")
    p.add_argument("--launcher", choices=("ray", "process"), default="process")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--servers", type=int, default=1, help="fresh servers, one after the other")
    p.add_argument("--warm-runs", type=int, default=2, help="warm bursts after each cold one")
    p.add_argument("--ready-timeout", type=float, default=900.0)
    p.add_argument("--out", default="cold-start")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra `tandem serve` flag, e.g. --serve-arg=--max-model-len=4096")
    args = p.parse_args()
    if args.servers < 1 or args.warm_runs < 1:
        p.error("--servers and --warm-runs must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"{args.model} {args.setup} ({args.launcher}); {args.concurrency} streams at once, "
          f"{args.input_len} in / {args.output_len} out; {started}", flush=True)
    servers = []
    for index in range(args.servers):
        result = one_server(index, args, out)
        servers.append(result)
        print(f"  server {index}: ready after {result['ready_s']:.1f} s", flush=True)
        print(_line("cold", result["cold"]), flush=True)
        for run, warm in enumerate(result["warm"], 1):
            print(_line(f"warm {run}", warm), flush=True)
    cold = statistics.median(s["cold"]["ttft_p50_ms"] for s in servers)
    warm = statistics.median(w["ttft_p50_ms"] for s in servers for w in s["warm"])
    print(f"  TTFT median, cold {cold:.1f} ms / warm {warm:.1f} ms = {cold / warm:.2f}x "
          f"(target <= 1.20x)")
    (out / "serve_cold_start.json").write_text(json.dumps(
        {"args": vars(args), "date": started, "servers": servers,
         "cold_ttft_p50_ms": cold, "warm_ttft_p50_ms": warm, "ratio": cold / warm}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
