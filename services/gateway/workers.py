"""The gateway's view of its workers: one gRPC channel each (a decode worker's Decode calls on
one DecodeStream: decode_stream.py), the last LoadReport (polled, so its
staleness is bounded by the poll interval), and the gateway's own ledger of what it has sent since
that report, so that two requests admitted between polls never count the same free blocks.

The pool changes while the gateway serves (the autoscaler, an operator): `add` connects a new
worker and routes to it once it has reported; `drain` stops routing new requests to one while its
running requests finish; `remove` (after `wait_idle`) disconnects it. Routing skips a draining
worker for everything new, retries and mid-stream moves included."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from services.gateway.decode_stream import DecodeStreams
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from services.security.cluster_token import aio_channel
from services.worker.local_calls import LocalChannel, LocalWorker, local_stub

log = logging.getLogger(__name__)

_NOT_CONFIRMED = math.inf
_SLOW_POLLS_DOWN = 3


@dataclass
class _Booking:
    blocks: int
    confirmed_at: float = _NOT_CONFIRMED   # monotonic time the worker granted it


@dataclass
class WorkerHandle:
    """One worker: its stub, its last load report, and the gateway's outstanding bookings on it."""

    address: str
    role: str                               # "prefill" | "decode" (colocated workers are "decode")
    channel: grpc.aio.Channel | LocalChannel
    stub: object
    report: worker_pb2.LoadReport | None = None
    healthy: bool = False
    draining: bool = False                  # no new requests; the running ones finish here
    failed_polls: int = 0
    reported_at: float = -math.inf          # monotonic start of the poll that gave `report`
    # A colocated worker takes a request's blocks as it generates, not as it joins: its bookings
    # stay for the request's life and count what the request will still grow into.
    keeps_bookings: bool = False
    bookings: dict[str, _Booking] = field(default_factory=dict)
    inflight_prompt_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def accepting(self) -> bool:
        """Routing may send it a new request (or a retry)."""
        return self.healthy and not self.draining

    @property
    def idle(self) -> bool:
        """Nothing of any request is on it, by the gateway's ledger and by its own last report."""
        if self.bookings or self.inflight_prompt_tokens:
            return False
        r = self.report
        return r is None or not (r.running_requests or r.waiting_requests or r.reserved_blocks
                                 or r.queued_prompt_tokens)

    # --- decode: blocks ---------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.report.num_blocks if self.report else 0

    @property
    def block_size(self) -> int:
        return self.report.block_size if self.report else 0

    @property
    def max_model_len(self) -> int:
        """The longest request (prompt + output) the worker takes; 0 until it has reported."""
        return self.report.max_model_len if self.report else 0

    @property
    def available_blocks(self) -> int:
        """Blocks a new request may count on. A decode worker takes reserved blocks out of its
        free count at Reserve, so only the gateway's bookings the report does not show yet are
        subtracted; on a colocated worker, the growth its admitted requests still have ahead
        (booked minus already in use, assuming the blocks in use are theirs)."""
        if self.report is None:
            return 0
        booked = sum(b.blocks for b in self.bookings.values())
        if self.keeps_bookings:
            in_use = self.report.num_blocks - self.report.free_blocks
            return self.report.free_blocks - max(0, booked - in_use)
        return self.report.free_blocks - booked

    def book(self, request_id: str, blocks: int) -> None:
        self.bookings[request_id] = _Booking(blocks)

    def confirm(self, request_id: str) -> None:
        booking = self.bookings.get(request_id)
        if booking is not None:
            booking.confirmed_at = time.monotonic()

    def unbook(self, request_id: str) -> None:
        self.bookings.pop(request_id, None)

    # --- prefill: queued prompt tokens ------------------------------------------------------------
    @property
    def queued_prompt_tokens(self) -> int:
        """The worker's own count (other gateways included) or ours, whichever is larger: ours is
        exact and fresh for what this gateway sent."""
        reported = self.report.queued_prompt_tokens if self.report else 0
        return max(reported, sum(self.inflight_prompt_tokens.values()))

    @property
    def cached_block_hashes(self) -> frozenset[int]:
        return frozenset(self.report.cached_block_hashes) if self.report else frozenset()

    @property
    def running_requests(self) -> int:
        return self.report.running_requests + self.report.waiting_requests if self.report else 0

    def apply_report(self, report: worker_pb2.LoadReport, poll_started_at: float) -> None:
        """A booking granted before this poll started is counted in the report's reserved or used
        blocks: it leaves the ledger."""
        self.report = report
        self.reported_at = poll_started_at
        self.healthy = True
        self.failed_polls = 0
        if self.keeps_bookings:
            return
        for rid in [rid for rid, b in self.bookings.items() if b.confirmed_at <= poll_started_at]:
            del self.bookings[rid]


class WorkerPool:
    """Channels to every worker, and a task that polls their load reports."""

    def __init__(self, prefill_addresses: tuple[str, ...], decode_addresses: tuple[str, ...],
                 poll_interval_s: float, rpc_timeout_s: float,
                 on_reports: Callable[[], None] = lambda: None, colocated: bool = False,
                 cluster_token: str = "",
                 local: Callable[[str], LocalWorker | None] = lambda address: None) -> None:
        self._cluster_token = cluster_token
        self._local = local
        self.prefill = [self._handle(a, "prefill") for a in prefill_addresses]
        self.decode = [self._handle(a, "decode") for a in decode_addresses]
        for worker in self.decode:
            worker.keeps_bookings = colocated
        self._poll_interval_s = poll_interval_s
        self._rpc_timeout_s = rpc_timeout_s
        self._on_reports = on_reports
        self._colocated = colocated
        self._poll_now: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._started = False

    def _handle(self, address: str, role: str) -> WorkerHandle:
        local = self._local(address)
        if local is not None:
            channel = LocalChannel()
            service = "PrefillWorker" if role == "prefill" else "DecodeWorker"
            return WorkerHandle(address=address, role=role, channel=channel,
                                stub=local_stub(local, service, channel))
        # Many concurrent streams share one channel: HTTP/2 multiplexes them.
        channel = aio_channel(address, self._cluster_token,
                              options=[("grpc.max_receive_message_length", -1)])
        if role == "prefill":
            stub = worker_pb2_grpc.PrefillWorkerStub(channel)
        else:   # its Decode calls share one DecodeStream, their tokens batched per step
            stub = DecodeStreams(worker_pb2_grpc.DecodeWorkerStub(channel))
        return WorkerHandle(address=address, role=role, channel=channel, stub=stub)

    @property
    def all(self) -> list[WorkerHandle]:
        return self.prefill + self.decode

    @property
    def max_model_len(self) -> int:
        """The longest request every worker that has reported takes (0: none has reported): a
        request may be routed to any of them."""
        return min((w.max_model_len for w in self.all if w.max_model_len), default=0)

    async def start(self, ready_timeout_s: float) -> None:
        """Returns once every worker has answered a load report, or, after `ready_timeout_s`, once
        at least one of each kind has (the others join when they answer); else TimeoutError."""
        deadline = time.monotonic() + ready_timeout_s
        while True:
            await self.poll_once()
            missing = [w.address for w in self.all if w.report is None]
            if not missing:
                break
            if time.monotonic() > deadline:
                kinds = [k for k in (self.prefill, self.decode) if k]
                if all(any(w.report is not None for w in kind) for kind in kinds):
                    log.warning("starting without workers that have not answered: %s", missing)
                    break
                raise TimeoutError(f"workers did not answer within {ready_timeout_s}s: {missing}")
            await asyncio.sleep(min(0.1, self._poll_interval_s))
        self._started = True
        for w in self.all:
            self._start_polling(w)

    def _start_polling(self, worker: WorkerHandle) -> None:
        # One loop per worker: a slow worker delays only its own reports.
        self._poll_now[worker.address] = asyncio.Event()
        self._tasks[worker.address] = asyncio.create_task(self._poll_loop(worker),
                                                          name=f"load-poll {worker.address}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._started = False
        await asyncio.gather(*(w.channel.close() for w in self.all), return_exceptions=True)

    # --- membership -------------------------------------------------------------------------------
    def find(self, address: str) -> WorkerHandle | None:
        return next((w for w in self.all if w.address == address), None)

    async def add(self, address: str, role: str, ready_timeout_s: float) -> WorkerHandle:
        """Connects a new worker and returns once it has answered a load report (routing takes it
        from then on); TimeoutError if it does not within ready_timeout_s (it is then left out)."""
        if role not in ("prefill", "decode"):
            raise ValueError(f"role must be prefill or decode, got {role!r}")
        if self.find(address) is not None:
            raise ValueError(f"worker {address} is already in the pool")
        worker = self._handle(address, role)
        worker.keeps_bookings = role == "decode" and self._colocated
        deadline = time.monotonic() + ready_timeout_s
        while worker.report is None:
            await self._poll(worker)
            if worker.report is not None:
                break
            if time.monotonic() > deadline:
                await worker.channel.close()
                raise TimeoutError(f"worker {address} did not answer within {ready_timeout_s}s")
            await asyncio.sleep(min(0.1, self._poll_interval_s))
        (self.prefill if role == "prefill" else self.decode).append(worker)
        if self._started:
            self._start_polling(worker)
        self._on_reports()
        log.info("worker %s (%s) joined", address, role)
        return worker

    def drain(self, address: str) -> WorkerHandle:
        """No new request goes to the worker from now on; the ones it holds finish there."""
        worker = self._require(address)
        worker.draining = True
        log.info("worker %s (%s) draining", address, worker.role)
        return worker

    async def wait_idle(self, address: str, timeout_s: float) -> None:
        """Returns once a draining worker holds nothing, by a report polled after that was so on
        the gateway's side; TimeoutError after timeout_s (the worker stays draining)."""
        worker = self._require(address)
        deadline = time.monotonic() + timeout_s
        while True:
            quiet_since = time.monotonic()
            if worker.idle:
                await self._poll(worker)
                # Nothing was sent to it since `quiet_since` (it drains), so a fresh report that
                # shows nothing running proves nothing is left.
                if worker.reported_at >= quiet_since and worker.idle or not worker.healthy:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {address} still busy after {timeout_s}s of draining")
            await asyncio.sleep(self._poll_interval_s)

    async def remove(self, address: str) -> WorkerHandle:
        """Stops polling the worker and closes its channel; routing no longer sees it."""
        worker = self._require(address)
        (self.prefill if worker.role == "prefill" else self.decode).remove(worker)
        task = self._tasks.pop(address, None)
        self._poll_now.pop(address, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await worker.channel.close()
        self._on_reports()
        log.info("worker %s (%s) removed", address, worker.role)
        return worker

    def _require(self, address: str) -> WorkerHandle:
        worker = self.find(address)
        if worker is None:
            raise ValueError(f"no worker {address} in the pool")
        return worker

    def request_poll(self) -> None:
        """Poll the decode workers now rather than at the next tick (capacity came back)."""
        for w in self.decode:
            event = self._poll_now.get(w.address)
            if event is not None:
                event.set()

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(w) for w in self.all))
        self._on_reports()

    async def _poll(self, worker: WorkerHandle) -> None:
        started = time.monotonic()
        try:
            report = await worker.stub.Load(worker_pb2.LoadRequest(), timeout=self._rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            worker.failed_polls += 1
            # Refused connection: the worker is gone. A slow answer may be a busy worker (its loop
            # behind a long step): only several in a row take it out of routing.
            gone = exc.code() == grpc.StatusCode.UNAVAILABLE or worker.failed_polls >= _SLOW_POLLS_DOWN
            if gone and worker.healthy:
                log.warning("worker %s stopped answering: %s", worker.address, exc.code().name)
                worker.healthy = False
            return
        worker.apply_report(report, started)

    async def _poll_loop(self, worker: WorkerHandle) -> None:
        poll_now = self._poll_now[worker.address]
        while True:
            try:
                await asyncio.wait_for(poll_now.wait(), self._poll_interval_s)
            except asyncio.TimeoutError:
                pass
            poll_now.clear()
            await self._poll(worker)
            self._on_reports()
