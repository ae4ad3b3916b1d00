"""Runs one load point (or one worker's share of it) against a backend and returns a record per
request sent. Times are perf_counter readings; nothing here computes metrics."""

from __future__ import annotations

import asyncio
import gc
import signal
from time import perf_counter
from typing import Callable, Sequence

import numpy as np

from loadgen.backends import Backend
from loadgen.load_pattern import LoadSpec, arrival_gaps
from loadgen.records import BenchRequest, RequestRecord

STOP_POLL_S = 0.05


class ProgressCounter:
    """Completed requests; `value` is all the runner touches, so a multiprocessing.Value fits."""

    def __init__(self) -> None:
        self.value = 0


class LoadRunner:
    """Sends requests[i % len(requests)] for i = 0, 1, ... following `spec`, the first
    spec.warmup_requests flagged as warm-up. The run stops issuing at its bound or when
    should_stop() turns true (Ctrl-C); a stopped run cancels what is in flight and marks it
    interrupted, so what it returns is always consistent."""

    def __init__(self, backend: Backend, requests: Sequence[BenchRequest], spec: LoadSpec,
                 progress: ProgressCounter | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.backend = backend
        self.requests = requests
        self.spec = spec
        self.progress = progress or ProgressCounter()
        self.should_stop = should_stop or (lambda: False)
        self.records: list[RequestRecord] = []
        self.interrupted = False
        self._next_index = 0
        self._drive: asyncio.Future | None = None
        self._deadline: float | None = None
        self._limit = None if spec.num_prompts is None else spec.num_prompts + spec.warmup_requests

    async def run(self, start_at: float | None = None) -> list[RequestRecord]:
        """start_at: a perf_counter time to begin at (workers of one run share it)."""
        # A full garbage collection over tens of thousands of live records stalls the loop for
        # tens of ms, which would show up as server latency. Records and streams make no
        # reference cycles worth chasing mid-run; reference counting frees them.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return await self._run(start_at)
        finally:
            if gc_was_enabled:
                gc.enable()

    async def _run(self, start_at: float | None) -> list[RequestRecord]:
        if start_at is not None and start_at > perf_counter():
            await asyncio.sleep(start_at - perf_counter())
        if self.spec.warmup_requests == 0:
            self._start_clock()
        drive = self._drive = asyncio.ensure_future(self._closed_loop() if self.spec.closed_loop
                                                    else self._open_loop())
        watch = asyncio.ensure_future(self._watch_stop())
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        except (NotImplementedError, RuntimeError, ValueError):
            pass                              # not the main thread: should_stop still works
        try:
            await drive
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
        finally:
            watch.cancel()
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        return self.records

    def _interrupt(self) -> None:
        self.interrupted = True
        if self._drive is not None:
            self._drive.cancel()

    async def _watch_stop(self) -> None:
        while True:
            await asyncio.sleep(STOP_POLL_S)
            if self.should_stop():
                self._interrupt()
                return

    def _start_clock(self) -> None:
        if self.spec.duration_s is not None:
            self._deadline = perf_counter() + self.spec.duration_s

    def _claim(self, scheduled: float) -> tuple[RequestRecord, BenchRequest] | None:
        """The next request to send, or None when the run's bound is reached."""
        i = self._next_index
        if self.interrupted or (self._limit is not None and i >= self._limit):
            return None
        if i == self.spec.warmup_requests and i > 0:
            self._start_clock()
        if self._deadline is not None and scheduled >= self._deadline:
            return None
        self._next_index += 1
        request = self.requests[i % len(self.requests)]
        record = RequestRecord(index=i, prompt_len=request.prompt_len, output_len_requested=request.output_len,
                               warmup=i < self.spec.warmup_requests, scheduled=scheduled)
        self.records.append(record)
        return record, request

    async def _send(self, record: RequestRecord, request: BenchRequest) -> None:
        record.started = record.sent = perf_counter()     # a backend refines sent to the wire time
        try:
            async with asyncio.timeout(self.spec.request_timeout_s):
                await self.backend.stream(request, record)
        except TimeoutError:
            record.fail("timeout", f"no complete response within {self.spec.request_timeout_s:g} s")
        except asyncio.CancelledError:
            record.interrupted = True
            raise
        except Exception as exc:              # a backend bug must cost one request, not the run
            record.fail("client_error", f"{type(exc).__name__}: {exc}")
        finally:
            if not record.end or not record.ok:
                record.end = perf_counter()
            self.progress.value += 1

    async def _closed_loop(self) -> None:
        slots = self.spec.max_concurrency or self._limit
        origin, stagger = perf_counter(), self.spec.ramp_up_s / slots

        async def slot(i: int) -> None:
            if stagger:
                await asyncio.sleep(max(0.0, origin + i * stagger - perf_counter()))
            while (claimed := self._claim(perf_counter())) is not None:
                await self._send(*claimed)

        await asyncio.gather(*(slot(i) for i in range(slots)))

    async def _open_loop(self) -> None:
        gaps = arrival_gaps(self.spec.request_rate, self.spec.burstiness, np.random.default_rng(self.spec.seed))
        limit = asyncio.Semaphore(self.spec.max_concurrency) if self.spec.max_concurrency else None
        pending: set[asyncio.Task] = set()
        arrival = perf_counter()
        try:
            while (claimed := self._claim(arrival)) is not None:
                delay = arrival - perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(self._send_when_free(limit, *claimed))
                pending.add(task)
                task.add_done_callback(pending.discard)
                arrival += next(gaps)
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _send_when_free(self, limit: asyncio.Semaphore | None, record: RequestRecord,
                              request: BenchRequest) -> None:
        if limit is None:
            await self._send(record, request)
            return
        try:
            async with limit:
                await self._send(record, request)
        except asyncio.CancelledError:
            record.interrupted = True
            record.end = record.end or perf_counter()
            raise
