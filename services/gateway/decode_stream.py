"""The gateway's side of DecodeWorker.DecodeStream (services/decode/decode_mux.py): every Decode
call to one decode worker rides one stream, the worker's outputs arrive batched (about one
message per engine step for all the requests on it, not one per request).

`DecodeStreams(stub)` stands where the worker's DecodeWorkerStub stood: `Decode(request,
timeout)` returns a call that behaves as grpc.aio's server-streaming call does for the session
(async-iterable TokenChunks, `cancel()`, grpc.aio.AioRpcError with the worker's status and text
when the request fails); the other methods are the stub's own. The stream opens on the first
call and again after it broke. A deadline ends the call here as DEADLINE_EXCEEDED and cancels
it on the worker; the stream breaking (the worker gone) fails every call on it with the
stream's error, as each of their own streams would have failed."""

from __future__ import annotations

import asyncio
import itertools

import grpc

from services.rpc.tandem.v1 import worker_pb2
from services.worker.local_calls import END, QueuedCall, rpc_error

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Call(QueuedCall):
    def __init__(self, owner: _Stream, number: int, timeout: float | None) -> None:
        super().__init__()
        self._owner, self._number = owner, number
        self._ended = False
        self._timer = None
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def deliver(self, output: worker_pb2.DecodeOutput) -> None:
        """An output of this call (an ended call is forgotten: none reaches it)."""
        if output.HasField("chunk"):
            self._items.put_nowait(output.chunk)
        if output.ended:
            code = _CODES.get(output.code, grpc.StatusCode.UNKNOWN)
            self.end(END if code == grpc.StatusCode.OK else rpc_error(code, output.details))

    def end(self, outcome: object) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        self._owner.forget(self._number)
        self._items.put_nowait(outcome)

    def _give_up(self, code: grpc.StatusCode, details: str) -> bool:
        """Ends the call here with `code` and cancels it on the worker; False if it had ended."""
        if self._ended:
            return False
        self.end(rpc_error(code, details))
        self._owner.send(worker_pb2.DecodeStreamRequest(call=self._number, cancel=True))
        return True

    def _expire(self) -> None:
        self._give_up(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def cancel(self) -> bool:
        """As grpc.aio's call.cancel(): False once the call has ended."""
        return self._give_up(grpc.StatusCode.CANCELLED, "Locally cancelled")


class _Stream:
    """One open DecodeStream and the calls on it."""

    def __init__(self, stub, on_broken) -> None:
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self.calls: dict[int, _Call] = {}
        self._numbers = itertools.count(1)
        self._call = stub.DecodeStream(self._requests())
        # Held: the loop keeps only a weak reference to a task.
        self._reader = asyncio.ensure_future(self._read(on_broken))

    async def _requests(self):
        while True:
            yield await self._outgoing.get()

    def start(self, request: worker_pb2.DecodeRequest, timeout: float | None) -> _Call:
        number = next(self._numbers)
        call = self.calls[number] = _Call(self, number, timeout)
        self.send(worker_pb2.DecodeStreamRequest(call=number, start=request))
        return call

    def send(self, message: worker_pb2.DecodeStreamRequest) -> None:
        self._outgoing.put_nowait(message)

    def forget(self, number: int) -> None:
        self.calls.pop(number, None)

    async def _read(self, on_broken) -> None:
        error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the worker ended its decode stream")
        try:
            async for batch in self._call:
                for output in batch.outputs:
                    if (call := self.calls.get(output.call)) is not None:
                        call.deliver(output)
        except grpc.aio.AioRpcError as exc:
            error = exc
        finally:
            on_broken(self)
            for call in list(self.calls.values()):
                call.end(error)


class DecodeStreams:
    """A DecodeWorkerStub whose Decode calls share one DecodeStream."""

    def __init__(self, stub) -> None:
        self._stub = stub
        self._stream: _Stream | None = None

    def __getattr__(self, name: str):
        return getattr(self._stub, name)

    def Decode(self, request: worker_pb2.DecodeRequest, timeout: float | None = None) -> _Call:
        if self._stream is None:
            self._stream = _Stream(self._stub, self._broken)
        return self._stream.start(request, timeout)

    def _broken(self, stream: _Stream) -> None:
        if self._stream is stream:
            self._stream = None
