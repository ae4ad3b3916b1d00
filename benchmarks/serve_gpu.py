"""The served path, measured from outside: `tandem serve` started fresh for each setup, loaded by
`tandem bench` sweeps over gRPC (which counts token ids) and over OpenAI HTTP (which counts text),
then stopped; one table of every point side by side.

    python -m benchmarks.serve_gpu [--model llama-3.1-8b-random] [--setups colocated,1p1d]
        [--concurrency 1,32,256] [--duration 15] [--input-len 512] [--output-len 128]
        [--http-concurrency 32] [--out DIR] [--serve-arg=--max-model-len=4096 ...]

A setup is `colocated` (one worker doing both phases), `Ncolocated`, or `NpMd` (N prefill and M
decode workers; with one GPU they share it, each with its share of the memory budget, KV pages
through CUDA IPC).
For the GPU figures: Llama-3.1-8B shapes with random bf16 weights, fixed output lengths (EOS
ignored). Each setup's first sweep point is also its cold start: the server is loaded as soon as
it says it is ready. Results: DIR/<setup>-<backend>.json (`tandem bench` results) and
DIR/serve_gpu.json (the table)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.served import Server


def rows_of(doc: dict, setup: str, backend: str) -> list[dict]:
    return [{"setup": setup, "backend": backend, "concurrency": run["max_concurrency"],
             "output_tok_s": run["output_throughput"], "ttft_p50_ms": run["median_ttft_ms"],
             "ttft_p99_ms": run.get("p99_ttft_ms"), "tpot_p50_ms": run["median_tpot_ms"],
             "itl_p99_ms": run.get("p99_itl_ms"), "completed": run["completed"],
             "failed": run["failed"], "errors": run["errors_by_code"],
             "output_token_mismatches": run.get("output_token_mismatches")}
            for run in doc["runs"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b-random")
    parser.add_argument("--setups", default="colocated,1p1d")
    parser.add_argument("--launcher", default="process", choices=("process", "ray"))
    parser.add_argument("--concurrency", default="1,32,256")
    parser.add_argument("--http-concurrency", default="32", help="'' to skip the HTTP sweep")
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--ready-timeout", type=float, default=300)
    parser.add_argument("--out", default="serve-gpu")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `tandem serve` flag, e.g. --serve-arg=--max-model-len=4096")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, ready = [], {}
    for setup in args.setups.split(","):
        server = Server(args.model, args.launcher, setup, args.serve_arg, out / f"{setup}-serve.log")
        lengths = ["--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
                   "--duration", str(args.duration), "--warmup-requests", "0"]
        try:
            ready[setup] = server.wait_ready(args.ready_timeout)
            print(f"# {setup}: ready in {ready[setup]:.1f} s", file=sys.stderr, flush=True)
            rows += rows_of(server.bench("tandem", [*lengths, "--sweep", f"concurrency:{args.concurrency}"],
                                         out, f"{setup}-grpc"), setup, "grpc")
            if args.http_concurrency:
                rows += rows_of(server.bench("openai", [*lengths, "--sweep",
                                                        f"concurrency:{args.http_concurrency}"],
                                             out, f"{setup}-http"), setup, "http")
        finally:
            server.stop()
    print(f"{'setup':<10} {'api':<5} {'conc':>5} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'TPOT p50':>9} {'ITL p99':>8} {'done':>5} {'failed':>6}")
    for r in rows:
        print(f"{r['setup']:<10} {r['backend']:<5} {r['concurrency']:>5} {r['output_tok_s']:>8.0f} "
              f"{r['ttft_p50_ms']:>9.1f} {r['ttft_p99_ms'] or 0:>9.1f} {r['tpot_p50_ms']:>9.2f} "
              f"{r['itl_p99_ms'] or 0:>8.1f} {r['completed']:>5} {r['failed']:>6} {r['errors'] or ''}")
    (out / "serve_gpu.json").write_text(json.dumps({"ready_s": ready, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
