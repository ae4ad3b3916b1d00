"""An LLMEngine for asyncio callers: the engine steps in one dedicated thread while it has work,
and sleeps (no polling) when it has none.

Every engine call (add, abort, reserve, release, ...) runs on that thread between two steps, so
the engine itself never needs a lock; callers `await loop.call(fn, ...)` from any event loop, or
use the typed helpers below. Each request's outputs go to its own `RequestStream`, an async
iterator fed from the engine thread through its event loop's thread-safe callback."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from services.engine.errors import InvalidRequestError, TandemError
from services.engine.outputs import RequestOutput
from services.engine.sampling_params import SamplingParams


class EngineStoppedError(TandemError):
    """The engine loop stopped (the worker is shutting down) or its step failed."""


log = logging.getLogger("tandem.engine")

_ABORTED = object()     # ends a stream whose request was aborted through the loop


class RequestStream:
    """The outputs of one request, in order, ending after the finished one, or early (`aborted`)
    when the request was aborted (outputs not yet read are dropped), or with an error."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.finished = False
        self.aborted = False
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._held: object | None = None    # an abort or error taken early by next_ready

    def _push(self, item: RequestOutput | BaseException | object) -> None:
        if item is _ABORTED:    # an abort ends the stream at once: outputs not yet read are dropped
            while not self._queue.empty():
                self._queue.get_nowait()
            self._held = None
        self._queue.put_nowait(item)

    def next_ready(self) -> RequestOutput | None:
        """The next output if it is already here (no waiting), else None; an abort or an error
        waiting in the queue is left for the iterator to raise."""
        if self.finished or self._held is not None or self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is _ABORTED or isinstance(item, BaseException):
            self._held = item
            return None
        self.finished = item.finished
        return item

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        if self._held is not None:
            item, self._held = self._held, None
        else:
            item = await self._queue.get()
        if item is _ABORTED:
            self.finished = self.aborted = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item


class EngineLoop:
    """`on_step(seconds, outputs)`, if given (or set before the first request), runs on the engine
    thread after every step (metrics)."""

    def __init__(self, engine: Any, name: str = "engine",
                 on_step: Callable[[float, list[RequestOutput]], None] | None = None) -> None:
        self.engine = engine
        self.name = name
        self.on_step = on_step
        self.num_steps = 0
        self._wake = threading.Condition()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._streams: dict[str, RequestStream] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} loop already started")
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops stepping; every open stream ends with EngineStoppedError. Idempotent."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self._fail_streams(EngineStoppedError(f"{self.name} stopped"))

    # --- calls from any thread or event loop -----------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Runs fn(*args, **kwargs) on the engine thread before its next step."""
        future: Future = Future()
        with self._wake:
            if self._stopping:
                future.set_exception(EngineStoppedError(f"{self.name} stopped"))
                return future
            self._calls.append((lambda: fn(*args, **kwargs), future))
            self._wake.notify()
        return future

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    async def add_request(self, request_id: str, prompt_token_ids: Sequence[int],
                          params: SamplingParams, *, prefill_only: bool = False,
                          generated_token_ids: Sequence[int] = (),
                          room_tokens: int = 0) -> RequestStream:
        return await self._start_stream(request_id, lambda: self.engine.add_request(
            request_id, prompt_token_ids, params, prefill_only=prefill_only,
            generated_token_ids=generated_token_ids, room_tokens=room_tokens))

    async def add_prefilled_request(self, request_id: str, prompt_token_ids: Sequence[int],
                                    generated_token_ids: Sequence[int],
                                    params: SamplingParams) -> RequestStream:
        return await self._start_stream(request_id, lambda: self.engine.add_prefilled_request(
            request_id, prompt_token_ids, generated_token_ids, params))

    async def abort(self, request_id: str) -> bool:
        """Frees what the request holds; its stream (if any) ends with `aborted` set. The abort
        runs even if the caller is cancelled while it waits for the engine thread: callers abort
        on their way out (often while being cancelled), and a dropped abort would leak blocks."""
        return await asyncio.shield(asyncio.wrap_future(self.submit(self._abort, request_id)))

    @property
    def num_open_streams(self) -> int:
        return len(self._streams)

    # --- the engine thread -------------------------------------------------------------------------
    async def _start_stream(self, request_id: str, add: Callable[[], None]) -> RequestStream:
        stream = RequestStream(request_id, asyncio.get_running_loop())

        def register_and_add() -> None:
            if request_id in self._streams:
                raise InvalidRequestError("request_id", f"{request_id!r} is already running here")
            self._streams[request_id] = stream
            try:
                add()
            except BaseException:
                del self._streams[request_id]
                raise

        await self.call(register_and_add)
        return stream

    def _abort(self, request_id: str) -> bool:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            self._deliver(stream._loop, [(stream, _ABORTED)])
        return self.engine.abort(request_id)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._calls or self._stopping or self.engine.has_unfinished_requests()):
                    self._wake.wait()
                if self._stopping:
                    break
                calls, self._calls = self._calls, deque()
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
            if self.engine.has_unfinished_requests():
                self._step()
        with self._wake:
            calls, self._calls = self._calls, deque()
        for _, future in calls:
            future.set_exception(EngineStoppedError(f"{self.name} stopped"))

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as exc:
            # A failed step must not take the worker down: fail what was running and carry on.
            error = EngineStoppedError(f"{self.name} step failed: {exc!r}")
            for request_id in list(self._streams):
                self.engine.abort(request_id)
            self._fail_streams(error)
            return
        self.num_steps += 1
        if self.on_step is not None:
            try:
                self.on_step(time.perf_counter() - start, outputs)
            except Exception:
                log.exception("%s: on_step failed (the outputs are still delivered)", self.name)
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
        for output in outputs:
            stream = (self._streams.pop(output.request_id, None) if output.finished
                      else self._streams.get(output.request_id))
            if stream is not None:
                deliveries.setdefault(stream._loop, []).append((stream, output))
        for loop, items in deliveries.items():
            self._deliver(loop, items)

    def _fail_streams(self, error: BaseException) -> None:
        streams, self._streams = self._streams, {}
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for stream in streams.values():
            by_loop.setdefault(stream._loop, []).append((stream, error))
        for loop, items in by_loop.items():
            self._deliver(loop, items)

    @staticmethod
    def _deliver(loop: asyncio.AbstractEventLoop, items: list) -> None:
        def push_all() -> None:
            for stream, item in items:
                stream._push(item)
        try:
            loop.call_soon_threadsafe(push_all)
        except RuntimeError:
            pass    # that event loop is closed: nobody is listening any more
