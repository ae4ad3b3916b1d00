"""DecodeWorker.DecodeStream: many Decode calls over one stream, their outputs batched.

A gateway keeps one DecodeStream open to each decode worker. On it the gateway numbers its calls
and sends a `start` (a DecodeRequest) for each and a `cancel` when it gives one up; the worker
sends DecodeBatch messages, each holding every output since the last batch went out: new
TokenChunks and calls that ended, with their status. Under load the engine's outputs of one step
reach the worker's loop together, so a batch is about one step: one message per step to the
gateway in place of one per request per step.

Each call runs exactly the per-request Decode handler (its checks, its error edge, its `finally`
that frees the request), so it ends with the same status and text as over Decode: OK, the code
its handler aborted with, or CANCELLED when the gateway cancelled it. A call for a request id
whose earlier call is still being cancelled waits for that one to end first. The stream ending
(the gateway gone, the worker stopping) cancels every call still on it."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from services.rpc.tandem.v1 import worker_pb2
from services.worker.local_calls import Aborted, CallContext


class _Outbox:
    """What the next batch carries; `ready` is set while it holds anything (and when the
    gateway's side of the stream ends)."""

    def __init__(self) -> None:
        self.outputs: list[worker_pb2.DecodeOutput] = []
        self.ready = asyncio.Event()

    def chunk(self, call: int, chunk: worker_pb2.TokenChunk) -> None:
        self.outputs.append(worker_pb2.DecodeOutput(call=call, chunk=chunk))
        self.ready.set()

    def end(self, call: int, code: grpc.StatusCode, details: str = "") -> None:
        self.outputs.append(worker_pb2.DecodeOutput(call=call, ended=True, code=code.value[0],
                                                    details=details))
        self.ready.set()

    def take(self) -> worker_pb2.DecodeBatch:
        batch = worker_pb2.DecodeBatch(outputs=self.outputs)
        self.outputs = []
        self.ready.clear()
        return batch


async def decode_stream(decode, requests):
    """The DecodeStream handler's body (an async generator of DecodeBatch) for the requests
    `requests` brings. `decode(request, context)` is the worker's per-request Decode handler."""
    outbox = _Outbox()
    calls: dict[int, asyncio.Task] = {}
    by_request: dict[str, asyncio.Task] = {}

    async def run(call: int, request: worker_pb2.DecodeRequest, before: asyncio.Task | None):
        try:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            async for chunk in decode(request, CallContext()):
                outbox.chunk(call, chunk)
            outbox.end(call, grpc.StatusCode.OK)
        except Aborted as exc:
            outbox.end(call, exc.code, exc.details)
        except asyncio.CancelledError:
            outbox.end(call, grpc.StatusCode.CANCELLED, "cancelled by the gateway")
        except Exception as exc:    # past the handler's own error edge: never left unanswered
            outbox.end(call, grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
        finally:
            calls.pop(call, None)
            if by_request.get(request.request_id) is asyncio.current_task():
                del by_request[request.request_id]

    async def read() -> None:
        async for message in requests:
            if message.HasField("start"):
                if message.call in calls:
                    outbox.end(message.call, grpc.StatusCode.INVALID_ARGUMENT,
                               f"call: {message.call} is already running on this stream")
                    continue
                rid = message.start.request_id
                task = asyncio.create_task(run(message.call, message.start, by_request.get(rid)))
                calls[message.call] = by_request[rid] = task
            elif (task := calls.get(message.call)) is not None:
                task.cancel()

    reader = asyncio.create_task(read())
    reader.add_done_callback(lambda _: outbox.ready.set())
    try:
        # Until the gateway sends no more and every call on the stream has ended.
        while not (reader.done() and not calls):
            await outbox.ready.wait()
            if reader.done():
                reader.result()     # a broken request stream ends the call as it ended the reader
            if outbox.outputs:
                yield outbox.take()
            else:
                outbox.ready.clear()
        if outbox.outputs:
            yield outbox.take()
    finally:
        reader.cancel()
        tasks = [reader, *calls.values()]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
