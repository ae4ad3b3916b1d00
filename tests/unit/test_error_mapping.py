"""Typed errors -> gRPC status and HTTP code, in one table."""

import grpc
import pytest

from services.engine.errors import (CapacityError, ConfigError, InvalidRequestError, ModelNotFoundError,
                                    ReservationError)
from services.gateway.errors import RequestTimeoutError, UnauthenticatedError, WorkerUnavailableError
from services.gateway.status import client_error, openai_error_body
from services.gateway.worker_calls import worker_error


@pytest.mark.parametrize("exc,code,status", [
    (InvalidRequestError("top_p", "must be in (0, 1]"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ModelNotFoundError("model 'x' is not served here"), grpc.StatusCode.NOT_FOUND, 404),
    (UnauthenticatedError("invalid API key"), grpc.StatusCode.UNAUTHENTICATED, 401),
    (CapacityError("busy", retry_after_s=2.5), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (WorkerUnavailableError("worker gone"), grpc.StatusCode.UNAVAILABLE, 503),
    (RequestTimeoutError("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (ConfigError("bad"), grpc.StatusCode.INTERNAL, 500),
])
def test_table(exc, code, status):
    err = client_error(exc)
    assert (err.grpc_code, err.http_status) == (code, status)
    assert err.message == str(exc)


def test_retry_after_rounds_up_and_names_the_field():
    err = client_error(CapacityError("busy", retry_after_s=2.1))
    assert err.retry_after_header == "3"
    body = openai_error_body(client_error(InvalidRequestError("max_tokens", "must be >= 1")))
    assert body["error"]["param"] == "max_tokens" and "max_tokens" in body["error"]["message"]


def test_unknown_exceptions_never_leak_their_text():
    err = client_error(RuntimeError("secret internals at /path/file.py line 3"))
    assert (err.grpc_code, err.http_status, err.message) == (grpc.StatusCode.INTERNAL, 500, "internal error")


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code, details):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_worker_statuses_become_typed_errors():
    e = worker_error(_RpcError(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens: must be >= 1"), "w:1")
    assert isinstance(e, InvalidRequestError) and e.field == "max_tokens"
    assert isinstance(worker_error(_RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"), "w:1"), CapacityError)
    assert isinstance(worker_error(_RpcError(grpc.StatusCode.FAILED_PRECONDITION, "x"), "w:1"), ReservationError)
    assert isinstance(worker_error(_RpcError(grpc.StatusCode.UNAVAILABLE, "x"), "w:1"), WorkerUnavailableError)
