"""Workers in this process, each on its own thread and event loop. What tests use, and the only
launcher under which the `local` KV transport works (sender and receiver share memory)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orchestration.gpus import local_gpus
from orchestration.launchers import WorkerSpec, make_worker
from orchestration.placement import Gpus
from services.worker.hosting import WorkerThread
from services.worker.local_calls import LocalWorker


class InProcessLauncher:
    def __init__(self, start_timeout_s: float) -> None:
        self._start_timeout_s = start_timeout_s
        self.threads: list[WorkerThread] = []

    def gpus(self) -> Gpus:
        return local_gpus()

    def reserve(self, slots: list[WorkerSpec]) -> None:
        pass    # this machine's resources are not booked ahead

    def start(self, specs: list[WorkerSpec]) -> list[str]:
        new = [WorkerThread(make_worker(s), f"{s.role}-{len(self.threads) + i}") for i, s in enumerate(specs)]
        self.threads += new
        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            futures = [pool.submit(t.start, s.host, s.port, self._start_timeout_s)
                       for t, s in zip(new, specs)]
            return [f.result() for f in futures]

    def local_worker(self, address: str) -> LocalWorker | None:
        thread = next((t for t in self.threads if t.address == address), None)
        return thread.local() if thread is not None else None

    def stop_worker(self, address: str) -> None:
        thread = next(t for t in self.threads if t.address == address)
        self.threads.remove(thread)
        thread.stop()

    def stop(self) -> None:
        threads, self.threads = self.threads, []
        for thread in reversed(threads):
            thread.stop()
