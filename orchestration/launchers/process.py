"""One local process per worker (`python -m services.prefill|decode`), each given its device
(`--device cuda:N` or cpu) and memory share by the cluster's placement, and reporting its bound
address on stdout once it is ready (engine loaded and warmed up). Workers watch their stdin: if
this launcher dies, they stop too."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from orchestration.gpus import local_gpus
from orchestration.launchers import WorkerSpec
from orchestration.placement import Gpus
from services.engine.errors import ConfigError
from services.worker.cli import LISTENING, worker_arguments


class ProcessLauncher:
    def __init__(self, start_timeout_s: float, stop_timeout_s: float = 10.0,
                 capture_logs: bool = True) -> None:
        """capture_logs: keep each worker's log in a temporary file (shown if it fails to start)
        instead of passing it through to this process's stderr."""
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._capture_logs = capture_logs
        self.processes: list[subprocess.Popen] = []
        self.by_address: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self._token_files: dict[str, str] = {}    # cluster token -> the 0600 file that holds it

    def gpus(self) -> Gpus:
        return local_gpus()

    def reserve(self, slots: list[WorkerSpec]) -> None:
        pass    # this machine's resources are not booked ahead

    def start(self, specs: list[WorkerSpec]) -> list[str]:
        launched = [self._spawn(spec) for spec in specs]
        try:
            addresses = [self._address(proc, log, spec) for proc, log, spec in launched]
        except BaseException:
            self.stop()
            raise
        self.by_address.update(zip(addresses, (proc for proc, _, _ in launched)))
        return addresses

    def _spawn(self, spec: WorkerSpec):
        log = tempfile.TemporaryFile() if self._capture_logs else None
        if log is not None:
            self._logs.append(log)
        cmd = [sys.executable, "-m", f"services.{spec.role}", "--host", spec.host,
               "--port", str(spec.port), "--exit-with-parent", *worker_arguments(spec.config)]
        if spec.config.transfer.cluster_token:      # a file, so it shows on no command line
            cmd += ["--cluster-token-file", self._token_file(spec.config.transfer.cluster_token)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self.processes.append(proc)
        return proc, log, spec

    def _token_file(self, token: str) -> str:
        if token not in self._token_files:
            fd, path = tempfile.mkstemp(prefix="tandem-cluster-token-")   # mode 0600
            with os.fdopen(fd, "w") as f:
                f.write(token)
            self._token_files[token] = path
        return self._token_files[token]

    def _address(self, proc: subprocess.Popen, log, spec: WorkerSpec) -> str:
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self._start_timeout_s)
        line = lines[0].decode().strip() if lines else ""
        if not line.startswith(LISTENING):
            tail = ""
            if log is not None:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
            raise ConfigError(f"{spec.role} worker did not start within {self._start_timeout_s}s "
                              f"(exit code {proc.poll()}): {tail}")
        return line.split()[1]

    def local_worker(self, address: str) -> None:
        return None     # its workers live in other processes: reached over gRPC

    def stop_worker(self, address: str) -> None:
        proc = self.by_address.pop(address)
        self.processes.remove(proc)
        self._stop([proc])

    def stop(self) -> None:
        processes, self.processes = self.processes, []
        self.by_address = {}
        self._stop(processes)
        logs, self._logs = self._logs, []
        for log in logs:
            log.close()
        files, self._token_files = self._token_files, {}
        for path in files.values():
            os.unlink(path)

    def _stop(self, processes: list[subprocess.Popen]) -> None:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + self._stop_timeout_s
        for proc in processes:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
