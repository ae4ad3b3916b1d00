"""Start and stop a set of Tandem workers.

    config = ClusterConfig(mode="disaggregated", prefill_workers=1, decode_workers=1,
                           launcher="inprocess", engine=EngineConfig(...))
    with Cluster(config) as handle:          # or: handle = cluster.start(); ...; cluster.stop()
        handle.prefill_addresses             # ("127.0.0.1:41231",)  PrefillWorker services
        handle.decode_addresses              # ("127.0.0.1:38117",)  DecodeWorker + KVTransfer
        GatewayConfig(**handle.gateway_fields(), ...)

In colocated mode there are no prefill workers and each decode worker runs whole requests
(`DecodeRequest.prefill_here`). Launchers: `inprocess` (threads of this process; tests, and the
`local` KV transport), `process` (one subprocess per worker), `ray` (one actor per worker;
restarted on death; the default for `tandem serve`). Workers bind port 0 unless `base_port` is
set: worker i then listens on base_port + i (decode workers first). With the in-process launcher,
`cluster.launcher.threads[i].worker` is worker i itself (its engine, its loop), for tests.

Each decode worker also listens for KV pages on a port of its own; its ReserveResponse and
LoadReport carry that `kv_address`, which the gateway passes on to Prefill."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from orchestration.launchers import Launcher, WorkerSpec
from services.engine.config import EngineConfig
from services.engine.errors import ConfigError
from services.kvtransfer import TRANSPORTS
from services.worker.config import WorkerConfig

MODES = ("disaggregated", "colocated")
LAUNCHERS = ("ray", "process", "inprocess")


@dataclass(frozen=True)
class ClusterConfig:
    mode: str = "disaggregated"
    prefill_workers: int = 1                # ignored (0) in colocated mode
    decode_workers: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)  # its `engine` is replaced by `engine`
    kv_transport: str = "auto"
    host: str = "127.0.0.1"
    base_port: int = 0
    launcher: str = "ray"
    ray_address: str | None = None          # None: start a local Ray instance if none is running
    ray_num_cpus: int | None = None         # for the local Ray instance; None: all
    start_timeout_s: float = 300.0
    capture_worker_logs: bool = True        # process launcher: logs to temp files, not stderr

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.kv_transport not in TRANSPORTS:
            raise ConfigError(f"kv_transport must be one of {TRANSPORTS}, got {self.kv_transport!r}")
        if self.kv_transport == "local" and self.launcher != "inprocess":
            raise ConfigError("kv_transport local needs launcher inprocess (sender and receiver "
                              "must share one process)")
        if self.decode_workers < 1:
            raise ConfigError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if self.mode == "disaggregated" and self.prefill_workers < 1:
            raise ConfigError(f"prefill_workers must be >= 1 in disaggregated mode, got {self.prefill_workers}")
        if not 0 <= self.base_port <= 65535 - self.num_workers:
            raise ConfigError(f"base_port must be in [0, {65535 - self.num_workers}], got {self.base_port}")
        if self.start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")

    @property
    def num_prefill(self) -> int:
        return self.prefill_workers if self.mode == "disaggregated" else 0

    @property
    def num_workers(self) -> int:
        return self.num_prefill + self.decode_workers

    def specs(self) -> list[WorkerSpec]:
        """Decode workers first, then prefill workers."""
        colocated = self.mode == "colocated"
        worker = dataclasses.replace(self.worker, engine=self.engine, kv_transport=self.kv_transport)
        roles = ["decode"] * self.decode_workers + ["prefill"] * self.num_prefill
        specs = []
        for i, role in enumerate(roles):
            config = dataclasses.replace(worker, colocated=colocated and role == "decode",
                                         worker_id=worker.worker_id and f"{worker.worker_id}-{role}-{i}")
            specs.append(WorkerSpec(role, config, self.host, self.base_port + i if self.base_port else 0))
        return specs


@dataclass(frozen=True)
class ClusterHandle:
    mode: str
    kv_transport: str
    prefill_addresses: tuple[str, ...]
    decode_addresses: tuple[str, ...]

    def gateway_fields(self) -> dict:
        """The fields of services.gateway.config.GatewayConfig that name these workers."""
        return {"mode": self.mode, "prefill_workers": self.prefill_addresses,
                "decode_workers": self.decode_addresses, "kv_transport": self.kv_transport}


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.launcher: Launcher | None = None
        self.handle: ClusterHandle | None = None

    def start(self) -> ClusterHandle:
        if self.launcher is not None:
            raise ConfigError("cluster already started")
        self.launcher = _make_launcher(self.config)
        specs = self.config.specs()
        try:
            addresses = self.launcher.start(specs)
        except BaseException:
            self.stop()
            raise
        n = self.config.decode_workers
        self.handle = ClusterHandle(self.config.mode, self.config.kv_transport,
                                    tuple(addresses[n:]), tuple(addresses[:n]))
        return self.handle

    def stop(self) -> None:
        """Stops every worker this cluster started. Idempotent."""
        launcher, self.launcher, self.handle = self.launcher, None, None
        if launcher is not None:
            launcher.stop()

    def __enter__(self) -> ClusterHandle:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _make_launcher(config: ClusterConfig) -> Launcher:
    if config.launcher == "inprocess":
        from orchestration.launchers.inprocess import InProcessLauncher
        return InProcessLauncher(config.start_timeout_s)
    if config.launcher == "process":
        from orchestration.launchers.process import ProcessLauncher
        return ProcessLauncher(config.start_timeout_s, capture_logs=config.capture_worker_logs)
    from orchestration.launchers.ray_actors import RayLauncher
    return RayLauncher(config.start_timeout_s, config.ray_address, config.ray_num_cpus)
