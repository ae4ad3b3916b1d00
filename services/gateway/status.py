"""The one place where typed errors become gRPC statuses and HTTP codes. Messages are the errors'
own text (which names the field and the limit); nothing else, never a stack trace, reaches a client."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from services.engine.errors import (CapacityError, ConfigError, InvalidRequestError, KVTransferError,
                                    ModelNotFoundError, ReservationError, TandemError,
                                    UnsupportedModelError)
from services.gateway.errors import RequestTimeoutError, UnauthenticatedError, WorkerUnavailableError


@dataclass(frozen=True)
class ClientError:
    """An error as a client sees it, in both protocols."""

    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str                    # OpenAI error object's "type"
    message: str
    param: str | None = None            # the offending field, when known
    retry_after_s: float | None = None  # 429 / 503: when to try again

    @property
    def retry_after_header(self) -> str | None:
        """Retry-After takes whole seconds; round up so a client never retries too early."""
        return None if self.retry_after_s is None else str(max(1, math.ceil(self.retry_after_s)))


_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, int, str], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    (UnsupportedModelError, grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    (WorkerUnavailableError, grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    # A lost hand-off between workers is the server's failure, not the client's: retry later.
    (KVTransferError, grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    (ReservationError, grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    (RequestTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
    (ConfigError, grpc.StatusCode.INTERNAL, 500, "server_error"),
)


def client_error(exc: BaseException) -> ClientError:
    """Maps any exception; unknown ones become INTERNAL / 500 with a fixed message."""
    for kind, code, status, type_ in _TABLE:
        if isinstance(exc, kind):
            return ClientError(code, status, type_, str(exc), param=getattr(exc, "field", None),
                               retry_after_s=getattr(exc, "retry_after_s", None))
    if isinstance(exc, TandemError):
        return ClientError(grpc.StatusCode.INTERNAL, 500, "server_error", str(exc))
    return ClientError(grpc.StatusCode.INTERNAL, 500, "server_error", "internal error")


def openai_error_body(err: ClientError) -> dict:
    return {"error": {"message": err.message, "type": err.openai_type, "param": err.param,
                      "code": err.http_status}}
