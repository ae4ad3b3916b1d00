"""Worker RPC failures as the gateway's typed errors. A worker's INVALID_ARGUMENT carries
"field: message" (the engine's InvalidRequestError text) and stays a client error; everything
that says the worker is gone or broken becomes WorkerUnavailableError."""

from __future__ import annotations

import grpc

from services.engine.errors import CapacityError, InvalidRequestError, ReservationError, TandemError
from services.gateway.errors import WorkerUnavailableError

# Codes after which another worker may well succeed (nothing was streamed yet).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                       grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.DATA_LOSS})


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRYABLE


def worker_error(exc: grpc.aio.AioRpcError, address: str) -> TandemError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, sep, message = details.partition(": ")
        return InvalidRequestError(field, message) if sep else InvalidRequestError("request", details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CapacityError(f"worker {address} is out of capacity: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ReservationError(f"worker {address}: {details}")
    return WorkerUnavailableError(f"worker {address} failed: {code.name}")
