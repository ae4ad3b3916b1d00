"""`tandem demo`: start `tandem serve` on free local ports with the default model, wait until its
HTTP /health answers 200, run a short concurrency sweep with the load generator, write the
report (JSON, CSV, PNG, HTML) and stop the server. --base-url skips the start and points the same
sweep at a server that is already running."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from loadgen.errors import TargetUnreachableError
from services.addresses import free_port

HEALTH_POLL_S = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    from loadgen.cli import one_line_errors
    one_line_errors(p)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--mode", choices=("colocated", "disaggregated"), default="disaggregated")
    p.add_argument("--launcher", choices=("ray", "process", "inprocess"), default="process",
                   help="how `tandem serve` starts its workers (default: local processes)")
    p.add_argument("--backend", choices=("openai", "openai-chat", "tandem"), default="openai")
    p.add_argument("--base-url", default=None,
                   help="use this running server instead of starting one (host:port for --backend tandem)")
    p.add_argument("--sweep", default="concurrency:1,2,4,8")
    p.add_argument("--num-prompts", type=int, default=24, help="measured requests per sweep point")
    p.add_argument("--random-input-len", type=int, default=64)
    p.add_argument("--random-output-len", type=int, default=32)
    p.add_argument("--result-dir", default="tandem-demo")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /health")
    p.add_argument("--no-progress", action="store_true")


class ServeProcess:
    """`tandem serve` as a child process, healthy on enter, stopped (SIGINT, then harder) on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.argv = [sys.executable, "-m", "orchestration.cli", "serve", "--model", args.model,
                     "--mode", args.mode, "--launcher", args.launcher,
                     "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
        self.timeout_s = args.startup_timeout
        self.log_path = os.path.join(args.result_dir, "server.log")
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServeProcess":
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "w")
        self._proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)     # our Ctrl-C is ours to relay
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_healthy(self) -> None:
        url = f"http://127.0.0.1:{self.http_port}/health"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TargetUnreachableError(f"tandem serve exited with code {self._proc.returncode} "
                                             f"while starting; see {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(HEALTH_POLL_S)
        raise TargetUnreachableError(f"tandem serve did not answer {url} within {self.timeout_s:g} s; "
                                     f"see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                self._proc.send_signal(sig)
                try:
                    self._proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def _plan(args: argparse.Namespace, base_url: str):
    from loadgen.backends import BackendConfig
    from loadgen.bench import BenchPlan, OutputSpec
    from loadgen.datasets import DatasetSpec
    from loadgen.load_pattern import LoadSpec
    from loadgen.sweep import parse_sweep
    return BenchPlan(
        backend=BackendConfig(kind=args.backend, base_url=base_url, ignore_eos=True),
        dataset=DatasetSpec(random_input_len=args.random_input_len, random_output_len=args.random_output_len),
        load=LoadSpec(num_prompts=args.num_prompts, warmup_requests=2, request_timeout_s=120.0),
        sweep=parse_sweep(args.sweep), tokenizer=args.model if args.base_url is None else None,
        output=OutputSpec(save_result=True, result_dir=args.result_dir, result_filename="demo",
                          show_progress=not args.no_progress))


def run(args: argparse.Namespace) -> int:
    from loadgen.bench import run_bench
    if args.base_url:
        result, paths = run_bench(_plan(args, args.base_url))
    else:
        print(f"starting tandem serve ({args.model}, {args.mode}, {args.launcher} workers)...", flush=True)
        with ServeProcess(args) as server:
            url = (f"127.0.0.1:{server.grpc_port}" if args.backend == "tandem"
                   else f"http://127.0.0.1:{server.http_port}")
            result, paths = run_bench(_plan(args, url))
    for point in result.points:
        s = point.summary
        if s.get("output_token_mismatches"):
            print(f"{point.spec.label}: output token counts differ (server vs client) in "
                  f"{s['output_token_mismatches']} of {s['completed']} requests: {s['output_token_mismatch_cause']}")
    html = next((p for p in paths if p.endswith(".html")), None)
    if html:
        print(f"report: {os.path.abspath(html)}")
    return 130 if result.interrupted else 0
