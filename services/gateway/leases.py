"""Keeps decode reservations alive while their requests wait: for a prefill slot behind a long
queue, and for their pages. A reservation's ttl is a lease; this gateway owns it and renews it
(DecodeWorker.Renew, one call per decode worker listing every held request) every third of the
ttl, so an admitted request never fails because it waited. If the gateway dies, renewals stop
and the worker takes its blocks back one ttl later, as before.

    async with leases.held(decode, request_id):
        ...   # Prefill: queue, compute, ship pages
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import grpc

from services.gateway.workers import WorkerHandle
from services.rpc.tandem.v1 import worker_pb2
from services.telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, ttl_s: float, rpc_timeout_s: float, metrics: GatewayMetrics | None = None) -> None:
        self.ttl_s = ttl_s
        self._metrics = metrics
        self.interval_s = ttl_s / 3
        self._rpc_timeout_s = min(rpc_timeout_s, self.interval_s)
        self._held: dict[str, tuple[WorkerHandle, set[str]]] = {}   # by worker address
        self._task: asyncio.Task | None = None
        self.renewals = 0          # reservations renewed (summed over calls)
        self.lost: list[str] = []  # request ids a worker no longer knew when renewed (recent)

    @contextlib.asynccontextmanager
    async def held(self, worker: WorkerHandle, request_id: str) -> AsyncIterator[None]:
        self.hold(worker, request_id)
        try:
            yield
        finally:
            self.drop(worker, request_id)

    def hold(self, worker: WorkerHandle, request_id: str) -> None:
        self._held.setdefault(worker.address, (worker, set()))[1].add(request_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="lease-renewal")

    def drop(self, worker: WorkerHandle, request_id: str) -> None:
        entry = self._held.get(worker.address)
        if entry is not None:
            entry[1].discard(request_id)
            if not entry[1]:
                del self._held[worker.address]

    def holding(self) -> int:
        return sum(len(ids) for _, ids in self._held.values())

    async def renew_once(self) -> None:
        """Renews every held reservation now, one call per decode worker."""
        entries = [(w, sorted(ids)) for w, ids in self._held.values() if ids]
        await asyncio.gather(*(self._renew(w, ids) for w, ids in entries))

    async def _renew(self, worker: WorkerHandle, request_ids: list[str]) -> None:
        try:
            response = await worker.stub.Renew(
                worker_pb2.RenewRequest(request_ids=request_ids, ttl_ms=int(self.ttl_s * 1000)),
                timeout=self._rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            # A busy or restarting worker: the next round tries again, well within the ttl.
            log.warning("renewing %d reservations on %s failed: %s", len(request_ids),
                        worker.address, exc.code().name)
            return
        gone = list(response.missing_request_ids)
        self.renewals += len(request_ids) - len(gone)
        # A lease dropped while the call was out moved on (its Decode claimed the blocks): only
        # ids this gateway still holds were lost.
        held = self._held.get(worker.address, (worker, set()))[1]
        missing = [request_id for request_id in gone if request_id in held]
        if missing:
            self.lost = (self.lost + missing)[-64:]
            for request_id in missing:      # gone from the worker: counted once, not renewed again
                self.drop(worker, request_id)
        if self._metrics is not None:
            self._metrics.lease_renewals.inc(len(request_ids) - len(gone))
            self._metrics.leases_lost.inc(len(missing))

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(self.interval_s)
            await self.renew_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
