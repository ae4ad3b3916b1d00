"""Errors the gateway raises on top of the engine's (services/engine/errors.py). Each maps once to
a gRPC status and an HTTP code in services/gateway/status.py."""

from __future__ import annotations

from services.engine.errors import TandemError


class UnauthenticatedError(TandemError):
    """No API key, or one the gateway does not know (-> UNAUTHENTICATED / 401)."""


class WorkerUnavailableError(TandemError):
    """No worker could take or finish the request: it died, or none is reachable (-> UNAVAILABLE / 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GatewayWarmingUpError(WorkerUnavailableError):
    """The gateway has not finished its warm path yet; it serves once /health says ok
    (-> UNAVAILABLE / 503, with a retry-after)."""


class RequestTimeoutError(TandemError):
    """The request ran past its deadline (-> DEADLINE_EXCEEDED / 504)."""
