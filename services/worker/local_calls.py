"""A worker in this process, called without gRPC: the same stub methods, requests and responses
as `worker_pb2_grpc.<Service>Stub`, and the same failures as `grpc.aio.AioRpcError`, but each
call is a coroutine of the worker's servicer run on the worker's own event loop.

    stub = local_stub(LocalWorker(servicer, worker_loop), "DecodeWorker", LocalChannel())
    report = await stub.Load(worker_pb2.LoadRequest(), timeout=2.0)
    call = stub.Decode(request, timeout=30.0)       # async-iterable, call.cancel()

What `tandem serve --launcher inprocess` gives the gateway for its own workers: a colocated
request then crosses two thread hand-offs (gateway loop -> worker loop -> gateway loop) in place
of a gRPC call and its streamed replies over loopback (~1 ms a leg).

Kept from gRPC: the error edge's `context.abort(code, details)` reaches the caller as that code
and text; a deadline cancels the handler on the worker and reads DEADLINE_EXCEEDED; the caller
cancelling (or `call.cancel()`) cancels the handler, so a stream's `finally` frees its request;
a worker whose loop has stopped, or a closed channel, reads UNAVAILABLE. Not kept: the cluster
token (a caller in the worker's own process is already inside its trust boundary), metadata and
message size limits."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.rpc.tandem.v1 import worker_pb2


class _Gate:
    """Admits coroutines onto a worker's loop until the worker begins to stop: what was admitted
    before runs (or is cancelled) while the loop winds down, nothing is admitted after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, coro, loop: asyncio.AbstractEventLoop) -> Future:
        with self._lock:
            if not self._closed:
                return asyncio.run_coroutine_threadsafe(coro, loop)
        coro.close()
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, _STOPPED)

    def close(self) -> None:
        with self._lock:
            self._closed = True


@dataclass(frozen=True)
class LocalWorker:
    """A worker's servicer (its RPC handlers) and the event loop they must run on; `close()`
    (when the worker begins to stop) makes later calls read UNAVAILABLE."""

    servicer: Any
    loop: asyncio.AbstractEventLoop
    gate: _Gate = field(default_factory=_Gate, compare=False)

    def close(self) -> None:
        self.gate.close()


class Aborted(Exception):
    """A handler's `context.abort(code, details)`, raised to whoever runs it outside gRPC."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class CallContext:
    """The part of grpc.aio.ServicerContext the workers' handlers use, for a handler run outside
    gRPC's own dispatch (a local call, or one call of a DecodeStream)."""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        raise Aborted(code, details)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _Handler:
    """One call's coroutine on the worker's loop. Its deadline is kept there, and a cancellation
    the caller did not ask for (the worker's loop stopping) ends it as UNAVAILABLE."""

    def __init__(self, worker: LocalWorker, coro, timeout: float | None) -> None:
        self._timeout = timeout
        self._expired = self._by_caller = False
        if timeout is not None and timeout <= 0:
            coro.close()
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        runner = self._run(coro)
        try:
            self.future = worker.gate.submit(runner, worker.loop)
        except grpc.aio.AioRpcError:
            coro.close()
            raise

    async def _run(self, coro):
        timer = None
        if self._timeout is not None:
            timer = asyncio.get_running_loop().call_later(self._timeout, self._expire,
                                                          asyncio.current_task())
        try:
            return await coro
        except asyncio.CancelledError:
            if self._by_caller:
                raise
            if self._expired:
                raise Aborted(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            raise Aborted(grpc.StatusCode.UNAVAILABLE, _STOPPED) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, task: asyncio.Task) -> None:
        self._expired = True
        task.cancel()

    def cancel(self) -> bool:
        """Cancels the handler on the worker (from any thread); False if it already ended or
        was cancelled before."""
        if self._by_caller or self.future.done():
            return False
        self._by_caller = True
        return self.future.cancel()

    def outcome(self) -> object:
        """Once done: the handler's result, or the grpc.aio.AioRpcError the caller sees."""
        if self.future.cancelled():     # by the caller, or by the loop ending before it ran
            if self._by_caller:
                return rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled")
            return rpc_error(grpc.StatusCode.UNAVAILABLE, _STOPPED)
        exc = self.future.exception()
        if exc is None:
            return self.future.result()
        if isinstance(exc, Aborted):
            return rpc_error(exc.code, exc.details)
        return rpc_error(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")


_STOPPED = "the worker stopped"


def _deliver(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass    # the caller's loop is gone: nobody waits for this call any more


class LocalChannel:
    """Stands where a grpc.aio.Channel would: closing it refuses further calls."""

    closed = False

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


class _UnaryMethod:
    def __init__(self, worker: LocalWorker, handler, channel: LocalChannel) -> None:
        self._worker, self._handler, self._channel = worker, handler, channel

    async def __call__(self, request, timeout: float | None = None):
        if self._channel.closed:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the channel is closed")
        waiter = asyncio.get_running_loop().create_future()
        call = _Handler(self._worker, self._handler(request, CallContext()), timeout)
        call.future.add_done_callback(
            lambda _: _deliver(waiter.get_loop(), _settle, waiter, call.outcome()))
        try:
            outcome = await waiter
        except asyncio.CancelledError:
            call.cancel()   # the caller was cancelled: so is the handler
            raise
        if isinstance(outcome, grpc.aio.AioRpcError):
            raise outcome
        return outcome


def _settle(waiter: asyncio.Future, outcome: object) -> None:
    if not waiter.done():
        waiter.set_result(outcome)


END = object()     # a QueuedCall's last item when it ended well


class QueuedCall:
    """The reading side of a server-streaming call fed through a queue (messages, then END or
    the grpc.aio.AioRpcError it ended with), as grpc.aio's call reads: iterate it for the
    messages; cancelling the task that waits for the next one cancels the call."""

    def __init__(self) -> None:
        self._items: asyncio.Queue = asyncio.Queue()
        self._done = False

    def cancel(self) -> bool:
        raise NotImplementedError

    def __aiter__(self) -> QueuedCall:
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._items.get()
        except asyncio.CancelledError:
            self.cancel()       # the reader was cancelled (its client gone): so is the call
            raise
        if item is END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, grpc.aio.AioRpcError):
            self._done = True
            raise item
        return item


class LocalStream(QueuedCall):
    """A server-streaming call: iterate it for the messages; `cancel()`, or cancelling the task
    that waits for the next one, ends it on the worker."""

    def __init__(self, worker: LocalWorker, handler, request, timeout: float | None) -> None:
        super().__init__()
        caller_loop = asyncio.get_running_loop()

        async def pump() -> None:
            async for message in handler(request, CallContext()):
                _deliver(caller_loop, self._items.put_nowait, message)

        self._call = _Handler(worker, pump(), timeout)
        self._call.future.add_done_callback(lambda _: _deliver(
            caller_loop, self._items.put_nowait, self._ending()))

    def _ending(self) -> object:
        outcome = self._call.outcome()
        return END if outcome is None else outcome      # pump() returns None when it ran out

    def cancel(self) -> bool:
        """As grpc.aio's call.cancel(): the handler is cancelled (its `finally` runs on the
        worker); a reader still waiting gets CANCELLED."""
        if not self._call.cancel():
            return False
        self._items.put_nowait(rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled"))
        return True


class _StreamMethod:
    def __init__(self, worker: LocalWorker, handler, channel: LocalChannel) -> None:
        self._worker, self._handler, self._channel = worker, handler, channel

    def __call__(self, request, timeout: float | None = None) -> LocalStream:
        if self._channel.closed:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the channel is closed")
        return LocalStream(self._worker, self._handler, request, timeout)


def local_stub(worker: LocalWorker, service: str, channel: LocalChannel):
    """An object with one attribute per method of `tandem.v1.<service>`, as its gRPC stub has;
    `channel.close()` ends its use."""
    methods = {}
    for method in worker_pb2.DESCRIPTOR.services_by_name[service].methods:
        if method.client_streaming:
            continue        # DecodeStream multiplexes calls over a network; local ones need not
        handler = getattr(worker.servicer, method.name)
        kind = _StreamMethod if method.server_streaming else _UnaryMethod
        methods[method.name] = kind(worker, handler, channel)
    return _Stub(methods)


class _Stub:
    def __init__(self, methods: dict) -> None:
        self.__dict__.update(methods)
