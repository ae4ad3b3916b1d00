"""A gateway cluster (tests/helpers/gateway_cluster.py) on its own thread and event loop, behind a
synchronous context manager: for tests whose body is synchronous, such as hypothesis properties
(which cannot await), to send requests from plain blocking clients."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.helpers.gateway_cluster import GatewayCluster, gateway_cluster


class BackgroundCluster:
    def __init__(self, mode: str = "disaggregated", **cluster_kwargs: Any) -> None:
        self._mode = mode
        self._kwargs = cluster_kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cluster", daemon=True)
        self._cm = None
        self.cluster: GatewayCluster | None = None

    def run(self, coro, timeout_s: float | None = 60.0) -> Any:
        """Runs a coroutine on the cluster's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def call(self, coro) -> Any:
        """Awaits a coroutine run on the cluster's loop (from another event loop)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def __enter__(self) -> "BackgroundCluster":
        self._thread.start()
        self._cm = gateway_cluster(self._mode, **self._kwargs)
        try:
            self.cluster = self.run(self._cm.__aenter__(), 120)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.run(self._cm.__aexit__(None, None, None), 120)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
