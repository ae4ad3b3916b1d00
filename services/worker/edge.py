"""The workers' error edge: typed errors become gRPC statuses here, once. Clients get the error's
own text (it names the field and the limit), never a stack trace; unexpected errors are logged
and reported as INTERNAL, and the worker keeps serving. Every handler passes the worker's
readiness check first: a worker that is warming up or stopping answers UNAVAILABLE."""

from __future__ import annotations

import functools
import logging

import grpc

from services.engine.engine_loop import EngineStoppedError
from services.engine.errors import (CapacityError, ConfigError, InvalidRequestError,
                                    KVTransferError, ModelNotFoundError, RequestCancelledError,
                                    ReservationError, TandemError, UnsupportedModelError)
from services.worker.readiness import NotReadyError

log = logging.getLogger("tandem.worker")

_STATUS = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedModelError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ReservationError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (KVTransferError, grpc.StatusCode.UNAVAILABLE),
    (EngineStoppedError, grpc.StatusCode.UNAVAILABLE),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (RequestCancelledError, grpc.StatusCode.CANCELLED),
)


def status_of(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context, exc: Exception) -> None:
    if not isinstance(exc, TandemError):
        log.exception("unexpected error in a worker RPC")
    await context.abort(status_of(exc), str(exc) or type(exc).__name__)


def unary_edge(method):
    """Maps the errors of a unary RPC handler `async def m(self, request, context)` of a worker
    with a `readiness`."""
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            self.readiness.require_ready()
            return await method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)
    return wrapper


def stream_edge(method):
    """Maps the errors of a server-streaming RPC handler (an async generator)."""
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            self.readiness.require_ready()
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)
    return wrapper


async def integrity_error(loop) -> str:
    """The engine's check_integrity() run between two steps: "" when sound, else its message."""
    try:
        await loop.call(loop.engine.check_integrity)
    except AssertionError as exc:
        return str(exc) or type(exc).__name__
    return ""
