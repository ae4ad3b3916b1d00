"""Load-generator backends: one abstract interface (base.Backend), one module per protocol."""

from __future__ import annotations

from loadgen.backends.base import BACKEND_KINDS, Backend, BackendConfig


def make_backend(config: BackendConfig) -> Backend:
    """The backend for config.kind; protocol modules load only when used."""
    if config.kind == "tandem":
        from loadgen.backends.tandem_grpc import TandemGrpcBackend
        return TandemGrpcBackend(config)
    from loadgen.backends.openai_http import OpenAIBackend
    return OpenAIBackend(config, chat=config.kind == "openai-chat")


__all__ = ["BACKEND_KINDS", "Backend", "BackendConfig", "make_backend"]
