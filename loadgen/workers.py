"""Executes one load point, in this process or split over worker processes (each with its own
event loop and connections) whose records merge into one run. Splitting keeps the client from
being the bottleneck at thousands of streams; all processes start on one shared CLOCK_MONOTONIC
instant, so their records share a time axis."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import signal
import time
from dataclasses import dataclass
from time import perf_counter

from loadgen.backends import BackendConfig, make_backend
from loadgen.errors import TargetUnreachableError
from loadgen.event_loop import run_async
from loadgen.load_pattern import LoadSpec, split_load
from loadgen.process_limits import raise_open_files_limit
from loadgen.progress import ProgressLine
from loadgen.records import BenchRequest, RequestRecord
from loadgen.runner import LoadRunner, ProgressCounter

START_MARGIN_S = 0.2
WORKER_START_TIMEOUT_S = 60.0


@dataclass
class RunOutcome:
    spec: LoadSpec
    records: list[RequestRecord]
    interrupted: bool
    model: str | None
    num_workers: int
    started_at: str                   # ISO-8601 UTC


def _expected_streams(spec: LoadSpec) -> int:
    if spec.max_concurrency:
        return spec.max_concurrency
    return (spec.num_prompts or 0) + spec.warmup_requests if spec.closed_loop else 64


async def _run_here(backend_config: BackendConfig, requests: list[BenchRequest], spec: LoadSpec,
                    progress: ProgressCounter) -> tuple[list[RequestRecord], bool, str | None]:
    backend = make_backend(backend_config)
    try:
        await backend.open(_expected_streams(spec))
        runner = LoadRunner(backend, requests, spec, progress)
        records = await runner.run()
        return records, runner.interrupted, backend.model
    finally:
        await backend.close()


def execute(backend_config: BackendConfig, requests: list[BenchRequest], spec: LoadSpec,
            num_workers: int = 1, show_progress: bool = True) -> RunOutcome:
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    raise_open_files_limit()
    shares = split_load(spec, num_workers)
    total = None if spec.num_prompts is None else spec.num_prompts + spec.warmup_requests
    if len(shares) == 1:
        counter = ProgressCounter()
        with ProgressLine(spec.label, total, lambda: counter.value, show_progress):
            records, interrupted, model = run_async(_run_here(backend_config, requests, spec, counter))
        return RunOutcome(spec, records, interrupted, model, 1, started_at)
    return _execute_in_workers(backend_config, requests, shares, spec, total, show_progress, started_at)


def _execute_in_workers(backend_config, requests, shares, spec, total, show_progress, started_at) -> RunOutcome:
    ctx = mp.get_context("spawn")       # no fork: grpc and event loops do not survive it
    ready, results = ctx.Queue(), ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    progress = ctx.Array("q", len(shares), lock=False)
    parts = len(shares)
    procs = [ctx.Process(target=_worker_main, daemon=True,
                         args=(i, backend_config, requests[i::parts] or requests, share, ready, results,
                               go, start_at, stop, progress))
             for i, share in enumerate(shares)]
    for p in procs:
        p.start()
    try:
        models = [_await_ready(ready, procs) for _ in procs]
        start_at.value = perf_counter() + START_MARGIN_S
        go.set()
        collected: dict[int, tuple] = {}
        interrupted = False
        with ProgressLine(spec.label, total, lambda: sum(progress), show_progress):
            while len(collected) < parts:
                try:
                    index, payload = results.get(timeout=0.2)
                    collected[index] = payload
                except queue.Empty:
                    if not any(p.is_alive() for p in procs) and results.empty():
                        break
                except KeyboardInterrupt:
                    interrupted = True
                    stop.set()
    finally:
        stop.set()
        go.set()                        # workers still waiting to start see the stop at once
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    records = [r for _, (recs, _) in sorted(collected.items()) for r in recs]
    interrupted = interrupted or any(flag for _, (_, flag) in collected.items()) or len(collected) < parts
    return RunOutcome(spec, records, interrupted, models[0] if models else None, parts, started_at)


def _await_ready(ready, procs) -> str | None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            kind, value = ready.get(timeout=0.2)
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                raise TargetUnreachableError("a load-generator worker process died while starting") from None
            continue
        if kind == "error":
            raise TargetUnreachableError(value)
        return value
    raise TargetUnreachableError(f"load-generator workers did not start within {WORKER_START_TIMEOUT_S:g} s")


def _worker_main(index, backend_config, requests, spec, ready, results, go, start_at, stop, progress) -> None:
    # Ctrl-C reaches the whole process group; the runner's own handler turns it into a clean stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_open_files_limit()
    counter = _SharedSlot(progress, index)
    model_holder = [backend_config.model]

    def wait_for_go() -> float:
        ready.put(("ready", model_holder[0]))
        go.wait()
        return start_at.value

    async def main():
        backend = make_backend(backend_config)
        try:
            await backend.open(_expected_streams(spec))
        except Exception as exc:
            ready.put(("error", str(exc)))
            await backend.close()
            return [], False
        model_holder[0] = backend.model
        when = await asyncio.get_running_loop().run_in_executor(None, wait_for_go)
        try:
            runner = LoadRunner(backend, requests, spec, counter, stop.is_set)
            records = await runner.run(when)
            signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C must not lose the records
            return records, runner.interrupted
        finally:
            await backend.close()

    records, interrupted = run_async(main())
    results.put((index, (records, interrupted)))


class _SharedSlot:
    """This worker's cell of the shared progress array, seen as a ProgressCounter."""

    def __init__(self, array, index: int) -> None:
        self._array, self._index = array, index

    @property
    def value(self) -> int:
        return self._array[self._index]

    @value.setter
    def value(self, v: int) -> None:
        self._array[self._index] = v
