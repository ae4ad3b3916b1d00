"""A worker's configuration: frozen, validated, built once by the launcher or `__main__`."""

from __future__ import annotations

import uuid
import dataclasses
from dataclasses import dataclass, field

from services.engine.config import EngineConfig
from services.engine.errors import ConfigError
from services.kvtransfer import TRANSPORTS, TransferConfig


@dataclass(frozen=True)
class WorkerConfig:
    """`kv_transport` is what a prefill worker uses when a request names none ("" or "auto" = by
    locality: local when the decode worker is in this process, cuda_ipc when it shares this node
    and CUDA, else grpc). Reservations live
    `reservation_ttl_s` unless the request asks for a ttl, and never longer than
    `max_reservation_ttl_s`; the reaper looks for expired ones every `reaper_interval_s`."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    worker_id: str = ""                  # "" -> "<role>-<random>"
    colocated: bool = False              # a decode worker that also runs prefills (reported role)
    advertise_host: str = ""             # how others reach this worker (its KV address); "" = the
                                         # host it binds (containers, multi-node: set it)
    kv_transport: str = ""
    kv_port: int = 0                     # decode: where KVTransfer listens (0: a free port)
    metrics_port: int | None = None      # Prometheus /metrics (0: a free port; None: not served)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    reservation_ttl_s: float = 30.0
    max_reservation_ttl_s: float = 600.0
    reaper_interval_s: float = 0.05
    shutdown_grace_s: float = 1.0
    engine_process: bool = False         # the engine in a process of its own (docs/enginecore.md)

    def __post_init__(self) -> None:
        if self.kv_transport not in ("", *TRANSPORTS):
            raise ConfigError(f"kv_transport must be one of {TRANSPORTS} or empty, got {self.kv_transport!r}")
        if not 0 < self.reservation_ttl_s <= self.max_reservation_ttl_s:
            raise ConfigError(f"reservation_ttl_s must be in (0, max_reservation_ttl_s="
                              f"{self.max_reservation_ttl_s}], got {self.reservation_ttl_s}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if not 0 <= self.kv_port <= 65535:
            raise ConfigError(f"kv_port must be in [0, 65535], got {self.kv_port}")
        if self.reaper_interval_s <= 0:
            raise ConfigError(f"reaper_interval_s must be > 0, got {self.reaper_interval_s}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")

    def named(self, role: str) -> str:
        return self.worker_id or f"{role}-{uuid.uuid4().hex[:8]}"


def worker_engine_config(config: WorkerConfig) -> EngineConfig:
    """The engine as a worker runs it: token ids out, no text (the gateway detokenizes for its
    clients; requests with stop strings are still detokenized, since stopping needs their text)."""
    return dataclasses.replace(config.engine, detokenize=False)
