"""Cold start against warm: a fresh `tandem serve`, hit at once by --concurrency streams the moment
it says it is ready, against the same load on the same server right after. With a warm-up before
"ready", the two TTFTs agree (issue target: cold median within 20% of warm).

    python benchmarks/serve_cold_start.py --model llama-3.1-8b-random --mode colocated \\
        --concurrency 32 --input-len 512 --output-len 128

Prints the start-up time (from launch until /health answers 200), then TTFT median / p90 and
output tok/s of the cold and the warm run, and the cold/warm TTFT ratio."""

from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadgen.backends import BackendConfig  # noqa: E402
from loadgen.bench import BenchPlan, OutputSpec, run_bench  # noqa: E402
from loadgen.datasets import DatasetSpec  # noqa: E402
from loadgen.load_pattern import LoadSpec  # noqa: E402
from orchestration.commands.demo import ServeProcess  # noqa: E402


def measure(url: str, args: argparse.Namespace, seed: int) -> dict:
    plan = BenchPlan(
        backend=BackendConfig(kind="openai", base_url=url, ignore_eos=True),
        dataset=DatasetSpec(random_input_len=args.input_len, random_output_len=args.output_len),
        load=LoadSpec(max_concurrency=args.concurrency, num_prompts=args.concurrency,
                      warmup_requests=0, request_timeout_s=600.0, seed=seed),
        tokenizer=args.model, output=OutputSpec(show_progress=False, plots=False))
    with open(os.devnull, "w") as quiet:
        result, _ = run_bench(plan, out=quiet)
    summary = result.points[0].summary
    assert summary["completed"] == args.concurrency, summary
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--mode", choices=("colocated", "disaggregated"), default="colocated")
    p.add_argument("--launcher", choices=("ray", "process"), default="process")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--result-dir", default="cold-start")
    args = p.parse_args()
    serve = SimpleNamespace(model=args.model, mode=args.mode, launcher=args.launcher,
                            startup_timeout=900.0, result_dir=args.result_dir)
    started = time.perf_counter()
    with ServeProcess(serve) as server:
        startup_s = time.perf_counter() - started
        url = f"http://127.0.0.1:{server.http_port}"
        cold = measure(url, args, seed=1)
        warm = measure(url, args, seed=2)
    print(f"{args.model} {args.mode} ({args.launcher}); {args.concurrency} streams, "
          f"{args.input_len} in / {args.output_len} out; ready after {startup_s:.1f} s "
          f"(server log: {server.log_path})")
    for name, s in (("cold", cold), ("warm", warm)):
        print(f"  {name}: TTFT median {s['median_ttft_ms']:.1f} ms, p90 {s['p90_ttft_ms']:.1f} ms; "
              f"{s['output_throughput']:.0f} output tok/s")
    print(f"  cold / warm TTFT median: {cold['median_ttft_ms'] / warm['median_ttft_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
