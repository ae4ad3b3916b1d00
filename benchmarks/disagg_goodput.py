"""Disaggregated vs colocated on two GPUs: goodput under one SLO, same model, same load.

    python -m benchmarks.disagg_goodput [--model llama-3.1-8b-random]
        [--setups 1p1d,2colocated] [--workloads 4096/256,512/512] [--rates 0.5,1,2,4,8]
        [--duration 60] [--slo ttft_ms:1000,tpot_ms:40,p:90] [--out DIR] [--serve-arg=...]

`1p1d` is one prefill and one decode worker (one GPU each on a two-GPU machine, KV pages across
them by CUDA IPC); `2colocated` is two colocated workers behind one gateway on the same two GPUs.
Each setup's server is started fresh; for each workload `tandem bench` runs an open-loop (Poisson)
rate sweep with goodput counted under the SLO, then its capacity search finds the largest rate
at which the SLO's percentile of requests meets it. Goodput: requests/s completing within TTFT
and TPOT bounds, failures counted against it. On fewer than two GPUs this is a dry run (every
worker shares the card), which checks the script, not the claim. Results:
DIR/<setup>-<workload>-{sweep,capacity}.json and DIR/disagg_goodput.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.served import Server


def _goodput_flags(slo: str) -> list[str]:
    bounds = dict(part.split(":") for part in slo.split(","))
    return ["--goodput", *(f"{key.removesuffix('_ms')}:{value}" for key, value in bounds.items()
                           if key != "p")]


def run_setup(args: argparse.Namespace, setup: str, out: Path) -> list[dict]:
    server = Server(args.model, args.launcher, setup, args.serve_arg, out / f"{setup}-serve.log")
    rows = []
    try:
        server.wait_ready(args.ready_timeout)
        for workload in args.workloads.split(","):
            prompt, output = workload.split("/")
            lengths = ["--random-input-len", prompt, "--random-output-len", output,
                       "--warmup-requests", "4"]
            name = f"{setup}-{prompt}x{output}"
            sweep = server.bench("tandem", [*lengths, "--sweep", f"rate:{args.rates}",
                                            "--duration", str(args.duration),
                                            *_goodput_flags(args.slo)], out, f"{name}-sweep")
            capacity = server.bench("tandem", [*lengths, "--slo", args.slo,
                                               "--capacity-search", "rate",
                                               "--capacity-start", args.rates.split(",")[0],
                                               "--capacity-max", str(args.capacity_max),
                                               "--capacity-max-runs", str(args.capacity_max_runs),
                                               "--duration", str(args.duration)],
                                    out, f"{name}-capacity")
            for run in sweep["runs"]:
                rows.append({
                    "setup": setup, "workload": workload, "rate": run["request_rate"],
                    "goodput_rps": run.get("request_goodput"), "request_rps": run["request_throughput"],
                    "output_tok_s": run["output_throughput"], "failed": run["failed"],
                    **{f"{m}_{q}_ms": run.get(f"{q}_{m}_ms") for m in ("ttft", "ttst", "tpot", "itl")
                       for q in ("median", "p99")},
                    "capacity_rps": (capacity.get("capacity") or {}).get("capacity")})
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b-random")
    parser.add_argument("--setups", default="1p1d,2colocated")
    parser.add_argument("--workloads", default="4096/256,512/512")
    parser.add_argument("--rates", default="0.5,1,2,4,8")
    parser.add_argument("--capacity-max", type=float, default=64)
    parser.add_argument("--capacity-max-runs", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--slo", default="ttft_ms:1000,tpot_ms:40,p:90")
    parser.add_argument("--launcher", default="process", choices=("process", "ray"))
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--out", default="disagg-goodput")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `tandem serve` flag, e.g. --serve-arg=--max-model-len=8192")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import torch
        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    if gpus < 2:
        print(f"# dry run: {gpus} GPU(s); every worker shares what there is", file=sys.stderr)
    rows = [row for setup in args.setups.split(",") for row in run_setup(args, setup, out)]
    print(f"{'setup':<11} {'workload':<9} {'rate':>5} {'goodput':>8} {'req/s':>6} {'tok/s':>7} "
          f"{'TTFT p50/p99':>14} {'TPOT p50/p99':>13} {'ITL p99':>8} {'failed':>6} {'capacity':>8}")
    for r in rows:
        print(f"{r['setup']:<11} {r['workload']:<9} {r['rate']:>5} {r['goodput_rps'] or 0:>8.2f} "
              f"{r['request_rps']:>6.2f} {r['output_tok_s']:>7.0f} "
              f"{r['ttft_median_ms'] or 0:>6.0f}/{r['ttft_p99_ms'] or 0:<7.0f} "
              f"{r['tpot_median_ms'] or 0:>5.1f}/{r['tpot_p99_ms'] or 0:<7.1f} "
              f"{r['itl_p99_ms'] or 0:>8.1f} {r['failed']:>6} {r['capacity_rps'] or 0:>8.2f}")
    capacities = {(r["setup"], r["workload"]): r["capacity_rps"] for r in rows}
    for workload in args.workloads.split(","):
        split, together = capacities.get(("1p1d", workload)), capacities.get(("2colocated", workload))
        if split and together:
            print(f"{workload}: 1p1d / 2colocated capacity within the SLO = {split / together:.2f}x")
    (out / "disagg_goodput.json").write_text(json.dumps({"gpus": gpus, "slo": args.slo,
                                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
