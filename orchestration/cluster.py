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

Placement (orchestration/placement.py): one GPU per worker when there are enough, else workers
share GPUs (fractional Ray GPUs, or one `--device cuda:N` per process) and split the per-card
memory fraction; no GPU: CPU. A plan whose workers cannot hold the model's weights in their share
is refused before any worker starts. `gpus` caps how many GPUs are used (0: CPU).

Autoscaling (`max_prefill_workers`, `max_decode_workers`): placement plans every worker the
cluster may grow to; `add_worker(role)` starts one in a free slot, `remove_worker(address)` stops
one the gateway has drained. On Ray, `node_groups` splits the workers into groups that each stay
on one node (a prefill worker with the decode workers it feeds), packed or spread (`ray_strategy`).

Each decode worker also listens for KV pages on a port of its own; its ReserveResponse and
LoadReport carry that `kv_address`, which the gateway passes on to Prefill."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from orchestration.launchers import RAY_STRATEGIES, Launcher, WorkerSpec
from orchestration.placement import Gpus, Placement, check_fit, place
from services.engine.config import EngineConfig, ModelConfig
from services.engine.errors import ConfigError
from services.kvtransfer import TRANSPORTS
from services.worker.config import WorkerConfig
from services.worker.local_calls import LocalWorker

MODES = ("disaggregated", "colocated")
LAUNCHERS = ("ray", "process", "inprocess")

log = logging.getLogger("tandem.cluster")


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
    gpus: int | None = None                 # how many of the GPUs to use; None: all; 0: CPU only
    ray_address: str | None = None          # None: start a local Ray instance if none is running
    ray_num_cpus: int | None = None         # for the local Ray instance; None: all
    start_timeout_s: float = 300.0
    capture_worker_logs: bool = True        # process launcher: logs to temp files, not stderr
    # The most workers of each role the cluster may grow to (autoscaling; None: the start counts).
    # Placement plans for them all, so a worker added later still has its device and share.
    max_prefill_workers: int | None = None
    max_decode_workers: int | None = None
    # Ray: workers split into this many node groups (round robin by role: a prefill worker and the
    # decode workers it feeds), each group on one node; groups packed onto few nodes or spread.
    node_groups: int = 1
    ray_strategy: str = "pack"

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
        if self.gpus is not None and self.gpus < 0:
            raise ConfigError(f"gpus must be >= 0, got {self.gpus}")
        if self.start_timeout_s <= 0:
            raise ConfigError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")
        if self.max_decode_workers is not None and self.max_decode_workers < self.decode_workers:
            raise ConfigError(f"max_decode_workers must be >= decode_workers ({self.decode_workers}), "
                              f"got {self.max_decode_workers}")
        if self.max_prefill_workers is not None and self.max_prefill_workers < self.num_prefill:
            raise ConfigError(f"max_prefill_workers must be >= prefill_workers ({self.num_prefill}), "
                              f"got {self.max_prefill_workers}")
        if self.node_groups < 1:
            raise ConfigError(f"node_groups must be >= 1, got {self.node_groups}")
        if self.ray_strategy not in RAY_STRATEGIES:
            raise ConfigError(f"ray_strategy must be one of {RAY_STRATEGIES}, got {self.ray_strategy!r}")
        if self.mode == "colocated" and self.max_prefill_workers:
            raise ConfigError("max_prefill_workers must be unset in colocated mode")

    def capacity(self) -> "ClusterConfig":
        """This config at its largest: what placement plans for."""
        return dataclasses.replace(
            self, max_prefill_workers=None, max_decode_workers=None,
            prefill_workers=self.num_prefill if self.max_prefill_workers is None else self.max_prefill_workers,
            decode_workers=self.decode_workers if self.max_decode_workers is None else self.max_decode_workers)

    @property
    def num_prefill(self) -> int:
        return self.prefill_workers if self.mode == "disaggregated" else 0

    @property
    def num_workers(self) -> int:
        return self.num_prefill + self.decode_workers

    @property
    def roles(self) -> list[str]:
        """Decode workers first, then prefill workers."""
        return ["decode"] * self.decode_workers + ["prefill"] * self.num_prefill

    def worker_names(self) -> list[str]:
        return [f"{role}-{i}" for i, role in enumerate(self.roles)]

    def specs(self, placements: tuple[Placement, ...] | None = None,
              model: ModelConfig | None = None) -> list[WorkerSpec]:
        """Decode workers first, then prefill workers; with placements, each worker's engine gets
        its device and its share of the card, and with the model, a pool no larger than the
        worker can use (max_num_seqs requests of max_model_len)."""
        colocated = self.mode == "colocated"
        worker = dataclasses.replace(self.worker, engine=self.engine, kv_transport=self.kv_transport)
        specs = []
        index_in_role = {"decode": 0, "prefill": 0}
        for i, role in enumerate(self.roles):
            config = dataclasses.replace(worker, colocated=colocated and role == "decode",
                                         worker_id=worker.worker_id and f"{worker.worker_id}-{role}-{i}")
            share = 0.0
            if placements is not None:
                config = dataclasses.replace(config, engine=_placed(self.engine, placements[i], model))
                share = placements[i].gpu_share
            group = index_in_role[role] % self.node_groups
            index_in_role[role] += 1
            specs.append(WorkerSpec(role, config, self.host, self.base_port + i if self.base_port else 0,
                                    share, group))
        return specs


def plan(config: ClusterConfig, gpus: Gpus, model: ModelConfig) -> tuple[Placement, ...]:
    """Where each worker runs (see orchestration/placement.py), refused with ConfigError when a
    worker's share of its card cannot hold the weights. `model` in the dtype served on a GPU."""
    gpus = usable_gpus(config, gpus)
    cache = config.engine.cache
    placements = place(config.num_workers, gpus, cache.gpu_memory_fraction, config.engine.device)
    if cache.gpu_memory_bytes is not None:      # a byte budget per worker, as given
        placements = tuple(dataclasses.replace(p, budget_bytes=cache.gpu_memory_bytes)
                           if p.on_gpu else p for p in placements)
    if cache.num_blocks is None:
        block_bytes = model.kv_bytes_per_token * cache.block_size
    else:
        block_bytes = model.kv_bytes_per_token * cache.block_size * cache.num_blocks
    check_fit(placements, config.worker_names(), model.weight_bytes, block_bytes, gpus,
              config.engine.model)
    return placements


def usable_gpus(config: ClusterConfig, gpus: Gpus) -> Gpus:
    """The machine's GPUs, as many as `config.gpus` allows."""
    return gpus if config.gpus is None else Gpus(min(gpus.count, config.gpus), gpus.memory_bytes)


def _placed(engine: EngineConfig, placement: Placement, model: ModelConfig | None) -> EngineConfig:
    cache = engine.cache
    if placement.on_gpu:
        cache = dataclasses.replace(cache, gpu_memory_fraction=placement.memory_fraction)
    if model is not None and cache.max_pool_tokens is None:
        max_len = engine.scheduler.max_model_len or model.max_position_embeddings
        cache = dataclasses.replace(cache, max_pool_tokens=engine.scheduler.max_num_seqs * max_len)
    return dataclasses.replace(engine, device=placement.device, cache=cache)


@dataclass(frozen=True)
class ClusterHandle:
    mode: str
    kv_transport: str
    prefill_addresses: tuple[str, ...]
    decode_addresses: tuple[str, ...]
    cluster_token: str = field(default="", repr=False)   # what calls to the workers must carry

    def gateway_fields(self) -> dict:
        """The fields of services.gateway.config.GatewayConfig that name these workers."""
        return {"mode": self.mode, "prefill_workers": self.prefill_addresses,
                "decode_workers": self.decode_addresses, "kv_transport": self.kv_transport,
                "cluster_token": self.cluster_token}


class Cluster:
    def __init__(self, config: ClusterConfig, gpus: Gpus | None = None) -> None:
        """gpus: the GPUs to place workers on; None: what the launcher finds (this machine, or
        the Ray cluster)."""
        self.config = config
        self.gpus = gpus
        self.launcher: Launcher | None = None
        self.handle: ClusterHandle | None = None
        self.placements: tuple[Placement, ...] = ()
        self._slots: list[WorkerSpec] = []          # every worker the cluster may run, placed
        self.running: dict[str, WorkerSpec] = {}    # address -> the slot it runs in

    def start(self) -> ClusterHandle:
        if self.launcher is not None:
            raise ConfigError("cluster already started")
        self.launcher = _make_launcher(self.config)
        try:
            self._slots = self._placed_specs(self.gpus if self.gpus is not None else self.launcher.gpus())
            self.launcher.reserve(self._slots)
            decode = [s for s in self._slots if s.role == "decode"][:self.config.decode_workers]
            prefill = [s for s in self._slots if s.role == "prefill"][:self.config.num_prefill]
            addresses = self.launcher.start(decode + prefill)
        except BaseException:
            self.stop()
            raise
        self.running = dict(zip(addresses, decode + prefill))
        n = self.config.decode_workers
        self.handle = ClusterHandle(self.config.mode, self.config.kv_transport,
                                    tuple(addresses[n:]), tuple(addresses[:n]),
                                    self.config.worker.transfer.cluster_token)
        return self.handle

    def add_worker(self, role: str) -> str:
        """Starts one more worker of `role` in a free slot of the plan; returns its address once
        it is ready. ConfigError when the role is at its maximum."""
        if self.launcher is None:
            raise ConfigError("cluster not started")
        taken = {id(spec) for spec in self.running.values()}
        spec = next((s for s in self._slots if s.role == role and id(s) not in taken), None)
        if spec is None:
            raise ConfigError(f"no room for another {role} worker: the cluster runs its maximum "
                              f"({sum(s.role == role for s in self._slots)})")
        address = self.launcher.start([spec])[0]
        self.running[address] = spec
        return address

    def local_worker(self, address: str) -> LocalWorker | None:
        """The worker at `address` itself, when it runs in this process (launcher `inprocess`):
        the gateway of `tandem serve` then calls it without gRPC."""
        return self.launcher.local_worker(address) if self.launcher is not None else None

    def remove_worker(self, address: str) -> None:
        """Stops one worker (the gateway has drained it); its slot is free again."""
        if address not in self.running:
            raise ConfigError(f"no worker {address} in this cluster")
        self.launcher.stop_worker(address)
        del self.running[address]

    def _placed_specs(self, gpus: Gpus) -> list[WorkerSpec]:
        capacity = self.config.capacity()
        model = _served_model_config(capacity.engine, usable_gpus(capacity, gpus))
        self.placements = plan(capacity, gpus, model)
        for name, placement in zip(capacity.worker_names(), self.placements):
            log.info("%s: %s", name, placement)
        return capacity.specs(self.placements, model)

    def stop(self) -> None:
        """Stops every worker this cluster started. Idempotent."""
        launcher, self.launcher, self.handle = self.launcher, None, None
        self.running = {}
        if launcher is not None:
            launcher.stop()

    def __enter__(self) -> ClusterHandle:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _served_model_config(engine: EngineConfig, gpus: Gpus) -> ModelConfig:
    """The model's architecture (no weights loaded) in the dtype its workers will serve."""
    import torch

    from services.engine.loader import load_tokenizer, serving_dtype
    model = load_tokenizer(engine.model).config
    device = torch.device("cuda" if gpus.count and engine.device != "cpu" else "cpu")
    return model.replace(dtype=serving_dtype(engine.dtype, model.dtype, device))


def _make_launcher(config: ClusterConfig) -> Launcher:
    if config.launcher == "inprocess":
        from orchestration.launchers.inprocess import InProcessLauncher
        return InProcessLauncher(config.start_timeout_s)
    if config.launcher == "process":
        from orchestration.launchers.process import ProcessLauncher
        return ProcessLauncher(config.start_timeout_s, capture_logs=config.capture_worker_logs)
    from orchestration.launchers.ray_actors import RayLauncher
    return RayLauncher(config.start_timeout_s, config.ray_address, config.ray_num_cpus,
                       strategy=config.ray_strategy)
