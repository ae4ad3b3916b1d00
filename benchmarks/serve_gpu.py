"""The served path, measured from outside: `tandem serve` started fresh for each setup, loaded by
`tandem bench` sweeps over gRPC (which counts token ids) and over OpenAI HTTP (which counts text),
then stopped; one table of every point side by side.

    python -m benchmarks.serve_gpu [--model llama-3.1-8b-random] [--setups colocated,1p1d]
        [--concurrency 1,32,256] [--duration 15] [--input-len 512] [--output-len 128]
        [--http-concurrency 32] [--out DIR] [--serve-arg=--max-model-len=4096 ...]

A setup is `colocated` (one worker doing both phases) or `NpMd` (N prefill and M decode workers;
with one GPU they share it, each with its share of the memory budget, KV pages through CUDA IPC).
For the GPU figures: Llama-3.1-8B shapes with random bf16 weights, fixed output lengths (EOS
ignored). Each setup's first sweep point is also its cold start: the server is loaded as soon as
it says it is ready. Results: DIR/<setup>-<backend>.json (`tandem bench` results) and
DIR/serve_gpu.json (the table)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.addresses import free_port


def _setup_flags(setup: str) -> list[str]:
    if setup == "colocated":
        return ["--mode", "colocated"]
    prefill, _, decode = setup.partition("p")
    return ["--mode", "disaggregated", "--prefill-workers", prefill,
            "--decode-workers", decode.rstrip("d")]


class Server:
    """`tandem serve` in its own process group, on free ports; stopped with SIGINT, then KILL."""

    def __init__(self, args: argparse.Namespace, setup: str, log_path: Path) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        command = [sys.executable, "-m", "orchestration.cli", "serve", "--launcher", args.launcher,
                   "--model", args.model, "--grpc-port", str(self.grpc_port),
                   "--http-port", str(self.http_port), *_setup_flags(setup), *args.serve_arg]
        self._log = open(log_path, "w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        url = f"http://127.0.0.1:{self.http_port}/health"
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tandem serve exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def bench(args: argparse.Namespace, server: Server, backend: str, concurrency: str,
          out: Path, name: str) -> dict:
    target = (["--backend", "tandem", "--target", f"127.0.0.1:{server.grpc_port}"]
              if backend == "tandem" else
              ["--backend", "openai", "--base-url", f"http://127.0.0.1:{server.http_port}",
               "--model", args.model])
    command = [sys.executable, "-m", "orchestration.cli", "bench", *target,
               "--tokenizer", args.model, "--dataset-name", "random",
               "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
               "--ignore-eos", "--sweep", f"concurrency:{concurrency}", "--duration", str(args.duration),
               "--warmup-requests", "0", "--no-progress", "--save-result", "--no-plots",
               "--result-dir", str(out), "--result-filename", name]
    subprocess.run(command, check=True, stdout=sys.stderr)
    return json.loads((out / f"{name}.json").read_text())


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
        server = Server(args, setup, out / f"{setup}-serve.log")
        try:
            ready[setup] = server.wait_ready(args.ready_timeout)
            print(f"# {setup}: ready in {ready[setup]:.1f} s", file=sys.stderr, flush=True)
            rows += rows_of(bench(args, server, "tandem", args.concurrency, out, f"{setup}-grpc"),
                            setup, "grpc")
            if args.http_concurrency:
                rows += rows_of(bench(args, server, "openai", args.http_concurrency, out,
                                      f"{setup}-http"), setup, "http")
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
