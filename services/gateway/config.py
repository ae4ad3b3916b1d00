"""The gateway's configuration: frozen, validated once at the entry point (`tandem serve`,
`python -m services.gateway`, tests). Each component receives only its own section."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.engine.errors import ConfigError
from services.security.exposure import check_exposure
from services.security.tls import TlsConfig

MODES = ("disaggregated", "colocated")
KV_TRANSPORTS = ("", "auto", "grpc", "local", "cuda_ipc")   # "" / "auto": the prefill worker picks by locality


@dataclass(frozen=True)
class AdmissionConfig:
    """What the gateway lets in. Capacity is counted in what runs out: decode KV blocks, prefill
    queue tokens, and each tenant's token rate."""

    max_queued_requests: int = 256         # waiting for capacity; beyond this: 429 at once
    queue_timeout_s: float = 5.0           # a queued request waiting longer gets 429
    max_running_requests: int = 4096       # admitted and not finished, all workers together
    max_prefill_queue_tokens: int = 1 << 20  # prompt tokens queued on prefill workers
    # A prompt that would wait longer than this for prefill (queued tokens / the workers' measured
    # rate) queues here instead; one that would wait beyond this + queue_timeout_s gets 429 now.
    max_prefill_wait_s: float = 30.0
    tenant_tokens_per_s: float = 0.0       # per API key, prompt + max_tokens; 0 = unlimited
    tenant_burst_tokens: int = 1 << 20     # bucket size when tenant_tokens_per_s > 0
    retry_after_s: float = 1.0             # the hint sent with a 429 when nothing better is known

    def __post_init__(self) -> None:
        if self.max_queued_requests < 0:
            raise ConfigError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")
        if self.queue_timeout_s <= 0:
            raise ConfigError(f"queue_timeout_s must be > 0, got {self.queue_timeout_s}")
        if self.max_running_requests < 1:
            raise ConfigError(f"max_running_requests must be >= 1, got {self.max_running_requests}")
        if self.max_prefill_queue_tokens < 1:
            raise ConfigError(f"max_prefill_queue_tokens must be >= 1, got {self.max_prefill_queue_tokens}")
        if self.max_prefill_wait_s <= 0:
            raise ConfigError(f"max_prefill_wait_s must be > 0, got {self.max_prefill_wait_s}")
        if self.tenant_tokens_per_s < 0:
            raise ConfigError(f"tenant_tokens_per_s must be >= 0, got {self.tenant_tokens_per_s}")
        if self.tenant_burst_tokens < 1:
            raise ConfigError(f"tenant_burst_tokens must be >= 1, got {self.tenant_burst_tokens}")
        if self.retry_after_s <= 0:
            raise ConfigError(f"retry_after_s must be > 0, got {self.retry_after_s}")


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens, which workers it routes to, and its limits.

    Ports 0 bind a free port (tests); `Gateway.grpc_port` / `.http_port` report the bound ones.
    In colocated mode `decode_workers` lists the colocated workers and `prefill_workers` is empty.
    """

    model: str = "tiny-random"              # preset or checkpoint directory (tokenizer only is loaded)
    served_model_name: str | None = None    # the id clients send; None: `model`
    mode: str = "disaggregated"
    prefill_workers: tuple[str, ...] = ()   # host:port of PrefillWorker services
    decode_workers: tuple[str, ...] = ()    # host:port of DecodeWorker services
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8000
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: no authentication
    insecure: bool = False                  # no API key although host is beyond loopback
    cluster_token: str = field(default="", repr=False)  # sent on every call to the workers
    tls: TlsConfig | None = None            # TLS for gRPC and HTTP; None: plaintext
    kv_transport: str = ""                  # how prefill ships pages to decode ("": by locality)
    max_model_len: int | None = None        # a cap on what the workers report (theirs: the model's
                                            # limit, capped by their KV pools); None: no cap
    request_timeout_s: float = 600.0        # whole request, first byte to last token
    reservation_ttl_s: float = 30.0         # a decode reservation lapses if no pages arrive
    load_poll_interval_s: float = 0.05      # load report staleness bound
    worker_rpc_timeout_s: float = 30.0      # Reserve / Load / Cancel / Prefill deadline
    worker_ready_timeout_s: float = 60.0    # at start, how long to wait for the workers' first reports
    # At start, after the workers reported: the most the warm path (real requests to every
    # worker, warm_path.py) may take before the gateway serves anyway; 0: no warm path.
    warm_path_timeout_s: float = 60.0
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefill_workers", tuple(self.prefill_workers))
        object.__setattr__(self, "decode_workers", tuple(self.decode_workers))
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        if not self.model:
            raise ConfigError("model must name a preset or a checkpoint directory")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.decode_workers:
            raise ConfigError("decode_workers must list at least one worker address")
        if self.mode == "disaggregated" and not self.prefill_workers:
            raise ConfigError("prefill_workers must list at least one worker in disaggregated mode")
        if self.mode == "colocated" and self.prefill_workers:
            raise ConfigError("prefill_workers must be empty in colocated mode")
        for name in ("grpc_port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name} must be in [0, 65535], got {getattr(self, name)}")
        if self.kv_transport not in KV_TRANSPORTS:
            raise ConfigError(f"kv_transport must be one of {KV_TRANSPORTS}, got {self.kv_transport!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")
        for name in ("request_timeout_s", "reservation_ttl_s", "load_poll_interval_s",
                     "worker_rpc_timeout_s", "worker_ready_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.warm_path_timeout_s < 0:
            raise ConfigError(f"warm_path_timeout_s must be >= 0, got {self.warm_path_timeout_s}")
        if any(not key for key in self.api_keys):
            raise ConfigError("api_keys must not contain an empty key")
        check_exposure(self.host, self.api_keys, self.insecure)

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model
