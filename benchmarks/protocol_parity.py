"""TTFT / TPOT as `tandem bench` measures them over gRPC and over OpenAI HTTP, on one server
under one load: a `tandem serve` child process, and two `tandem bench` processes (one per
protocol) run at the same time for the same duration at the same concurrency. Prints both
medians and their relative difference. On a GPU with the 8B preset (random weights, EOS ignored):

    python benchmarks/protocol_parity.py --model llama-3.1-8b-random --concurrency 8 --duration 60 \\
        --input-len 512 --output-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestration.commands.demo import ServeProcess  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(a: argparse.Namespace, kind: str, url: str, result_dir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "bench", "--backend", kind, "--base-url", url,
         "--tokenizer", a.model, "--max-concurrency", str(a.concurrency), "--random-range-ratio", "0.5",
         "--duration", str(a.duration), "--warmup-requests", str(a.concurrency), "--ramp-up", "0.5",
         "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len), "--ignore-eos",
         "--no-progress", "--no-plots", "--save-result", "--result-dir", result_dir, "--result-filename", kind],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--mode", default="colocated", choices=("colocated", "disaggregated"))
    p.add_argument("--concurrency", type=int, default=4, help="streams per protocol")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="protocol-parity-")
    serve_args = argparse.Namespace(model=a.model, mode=a.mode, launcher="process",
                                    startup_timeout=a.startup_timeout, result_dir=out)
    with ServeProcess(serve_args) as server:
        procs = {"tandem": bench(a, "tandem", f"127.0.0.1:{server.grpc_port}", out),
                 "openai": bench(a, "openai", f"http://127.0.0.1:{server.http_port}", out)}
        for kind, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"{kind} bench failed: {err[-2000:]}")
    runs = {k: json.load(open(os.path.join(out, f"{k}.json")))["runs"][0] for k in procs}
    print(f"model {a.model} ({a.mode}), {a.concurrency} streams per protocol, {a.duration:g} s, "
          f"{a.input_len} in / {a.output_len} out (+-50%), EOS ignored")
    for kind, r in runs.items():
        print(f"{kind:7s} completed {r['completed']:5d} failed {r['failed']}  TTFT p50 {r['median_ttft_ms']:8.2f} ms  "
              f"TPOT p50 {r['median_tpot_ms']:7.2f} ms  output token mismatches {r['output_token_mismatches']}")
    for metric in ("median_ttft_ms", "median_tpot_ms"):
        g, h = runs["tandem"][metric], runs["openai"][metric]
        print(f"{metric}: gRPC / HTTP = {g / h:.3f} ({abs(g - h) / max(g, h):.1%} apart)")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
