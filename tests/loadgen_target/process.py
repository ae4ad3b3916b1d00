"""Starts the target in its own process (so it never shares an event loop or a core's time
slices with the client under test) and stops it on exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TargetProcess:
    """with TargetProcess(ttft_ms=100, itl_ms=20) as target: target.http_url, target.grpc_address"""

    def __init__(self, **flags) -> None:
        self.argv = [sys.executable, "-m", "tests.loadgen_target"]
        for name, value in flags.items():
            if value is True:
                self.argv.append(f"--{name.replace('_', '-')}")
            elif value is not None and value is not False:
                self.argv += [f"--{name.replace('_', '-')}", str(value)]
        self._proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = 0

    def __enter__(self) -> "TargetProcess":
        self._proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError(f"load-test target did not start: {' '.join(self.argv)}")
        ports = json.loads(line)
        self.http_port, self.grpc_port = ports["http_port"], ports["grpc_port"]
        return self

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def emission_stats(self) -> dict:
        """The target's own lateness against its schedule so far (GET /stats)."""
        import urllib.request
        with urllib.request.urlopen(self.http_url + "/stats", timeout=10) as resp:
            return json.loads(resp.read())

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._proc = None
