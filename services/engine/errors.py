"""Typed errors raised by the engine. The gateway maps each to a gRPC status / HTTP code once,
at the edge; nothing inside the engine knows about transports."""

from __future__ import annotations


class TandemError(Exception):
    """Base of every error Tandem raises on purpose."""


class ConfigError(TandemError):
    """A configuration value is out of range or inconsistent."""


class InvalidRequestError(TandemError):
    """A request is malformed: names the field and the limit (-> INVALID_ARGUMENT / 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelNotFoundError(TandemError):
    """Unknown preset, or a checkpoint directory that does not exist (-> NOT_FOUND / 404)."""


class UnsupportedModelError(TandemError):
    """The checkpoint's architecture or a feature of it is not supported (-> INVALID_ARGUMENT)."""


class CapacityError(TandemError):
    """Not enough KV blocks / queue room now (-> RESOURCE_EXHAUSTED / 429)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KVTransferError(TandemError):
    """KV pages could not be shipped or landed: corrupt, truncated, mismatched layout, or the
    receiver went away (-> the transfer is rejected, its blocks freed; UNAVAILABLE / DATA_LOSS)."""


class ReservationError(TandemError):
    """A decode request names no live reservation: it expired, was cancelled or never existed
    (-> FAILED_PRECONDITION)."""


class RequestCancelledError(TandemError):
    """The request was cancelled (Cancel RPC, client gone) before it finished (-> CANCELLED)."""
