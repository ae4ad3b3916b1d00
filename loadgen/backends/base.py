"""The one interface every load-generator backend implements, and the settings they share.

A backend turns a BenchRequest into one streamed call and writes what it sees into the
RequestRecord: the arrival time of each content-bearing chunk (taken before any parsing), the text,
the token counts the server reports and how the stream ended. Server faults (error status, early
close) are recorded, never raised; the runner adds the per-request timeout and the send times."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from loadgen.errors import BenchConfigError
from loadgen.records import BenchRequest, RequestRecord

BACKEND_KINDS = ("tandem", "openai", "openai-chat")
# Where `tandem serve` listens by default (gRPC, HTTP): used when --base-url is not given.
DEFAULT_TARGETS = {"tandem": "127.0.0.1:50051", "openai": "http://127.0.0.1:8000",
                   "openai-chat": "http://127.0.0.1:8000"}


@dataclass(frozen=True)
class BackendConfig:
    kind: str                       # one of BACKEND_KINDS
    base_url: str                   # http(s)://host:port for openai*, host:port for tandem
    model: str | None = None        # None: ask the server (first model it lists)
    api_key: str | None = None      # sent as "Bearer <key>" (HTTP header / gRPC metadata)
    endpoint: str | None = None     # HTTP path override; default by kind
    ignore_eos: bool = False
    temperature: float | None = None
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise BenchConfigError("--backend", f"must be one of {', '.join(BACKEND_KINDS)}, got {self.kind!r}")
        if not self.base_url:
            raise BenchConfigError("--base-url", "is required")
        if self.kind != "tandem" and not self.base_url.startswith(("http://", "https://")):
            raise BenchConfigError("--base-url", f"must start with http:// or https:// for --backend {self.kind}, "
                                                 f"got {self.base_url!r}")
        if self.temperature is not None and self.temperature < 0:
            raise BenchConfigError("--temperature", f"must be >= 0, got {self.temperature}")
        if self.connect_timeout_s <= 0:
            raise BenchConfigError("--connect-timeout", f"must be > 0, got {self.connect_timeout_s}")


class Backend(abc.ABC):
    """One protocol. Lifecycle: `await open()` (connects and checks the target, raising
    TargetUnreachableError), any number of concurrent `await stream(...)`, then `await close()`."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.model: str | None = config.model

    @abc.abstractmethod
    async def open(self, expected_streams: int) -> None:
        """Connect, check the target answers, and resolve self.model when it was not given."""

    @abc.abstractmethod
    async def stream(self, request: BenchRequest, record: RequestRecord) -> None:
        """Send one request and consume its stream into record (see the module docstring)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call after a failed open."""
