"""Runs an asyncio worker (prefill or decode) in a thread with its own event loop, behind a
synchronous start/stop: what in-process clusters and Ray actors use, so the worker's loop never
competes with the caller's."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from services.worker.local_calls import LocalWorker


class WorkerThread:
    """`worker` has `async start(host, port) -> address` and `async stop()`."""

    def __init__(self, worker: Any, name: str) -> None:
        self.worker = worker
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self.address: str | None = None
        self._local = LocalWorker(worker, self._loop)

    def start(self, host: str, port: int = 0, timeout_s: float = 300.0) -> str:
        self._thread.start()
        try:
            self.address = self.run(self.worker.start(host, port), timeout_s)
        except BaseException:
            self._shutdown_loop()
            raise
        return self.address

    def run(self, coro, timeout_s: float | None = None) -> Any:
        """Runs a coroutine on the worker's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def local(self) -> LocalWorker:
        """The worker as a caller in this process reaches it without gRPC (local_calls.py)."""
        return self._local

    def stop(self, timeout_s: float = 30.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self.worker.stop(), timeout_s)
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self._local.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        # What is still on the loop (a local call's handler) is cancelled and runs its `finally`
        # here, so no caller waits on a loop that will never run again.
        self._loop.run_until_complete(_cancel_others())
        self._loop.close()


async def _cancel_others() -> None:
    # A cancelled task's `finally` may start others: rounds until none is left.
    for _ in range(10):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
