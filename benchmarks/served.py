"""Helpers of the serving benchmarks: a fresh `tandem serve` on free ports in its own process
group (stopped with SIGINT, then KILL), and `tandem bench` runs against it whose results are read
back from their JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.addresses import free_port


def served_prompt_len(tokenizer, input_len: int) -> int:
    """How many tokens the gateway runs for a text that `tandem bench` counts as input_len (it
    counts without special tokens; the gateway's tokenizer adds them, e.g. BOS): the length an
    engine-alone baseline must use for the same work."""
    added = len(tokenizer.encode("a")) - len(tokenizer.encode("a", add_special_tokens=False))
    return input_len + added


def setup_flags(setup: str) -> list[str]:
    """`colocated` (one worker doing both phases), `Ncolocated` (N of them behind one gateway),
    or `NpMd` (N prefill and M decode workers)."""
    if setup.endswith("colocated"):
        count = setup[:-len("colocated")] or "1"
        return ["--mode", "colocated", "--decode-workers", count]
    prefill, _, decode = setup.partition("p")
    return ["--mode", "disaggregated", "--prefill-workers", prefill,
            "--decode-workers", decode.rstrip("d")]


class Server:
    """`tandem serve` in its own process group, on free ports."""

    def __init__(self, model: str, launcher: str, setup: str, extra: list[str], log_path: Path) -> None:
        self.model = model
        self.grpc_port, self.http_port = free_port(), free_port()
        command = [sys.executable, "-m", "orchestration.cli", "serve", "--launcher", launcher,
                   "--model", model, "--grpc-port", str(self.grpc_port),
                   "--http-port", str(self.http_port), *setup_flags(setup), *extra]
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

    def bench(self, backend: str, load: list[str], out: Path, name: str) -> dict:
        """One `tandem bench` invocation (its load flags given), EOS ignored, results saved."""
        target = (["--backend", "tandem", "--target", f"127.0.0.1:{self.grpc_port}"]
                  if backend == "tandem" else
                  ["--backend", "openai", "--base-url", f"http://127.0.0.1:{self.http_port}",
                   "--model", self.model])
        command = [sys.executable, "-m", "orchestration.cli", "bench", *target,
                   "--tokenizer", self.model, "--dataset-name", "random", "--ignore-eos", *load,
                   "--no-progress", "--save-result", "--no-plots", "--result-dir", str(out),
                   "--result-filename", name]
        subprocess.run(command, check=True, stdout=sys.stderr)
        return json.loads((out / f"{name}.json").read_text())
