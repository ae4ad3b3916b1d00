"""Ways to run a cluster's workers: in this process (threads), as local processes, or as Ray
actors. Each launcher says which GPUs its workers can use (`gpus()`), starts a list of
`WorkerSpec`s and returns their gRPC addresses, in order (it may be called again to add workers);
`stop_worker(address)` stops one, `stop()` everything it started; `local_worker(address)` is the
worker itself when it runs in this process (the in-process launcher's threads). `reserve(slots)`
comes first, with every worker the cluster may run (the Ray launcher books their resources,
node by node)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestration.placement import Gpus
from services.worker.config import WorkerConfig
from services.worker.local_calls import LocalWorker

ROLES = ("prefill", "decode")
RAY_STRATEGIES = ("pack", "spread")   # Ray: node groups on as few nodes as possible, or across nodes


@dataclass(frozen=True)
class WorkerSpec:
    role: str               # "prefill" | "decode" (a colocated worker is a decode worker)
    config: WorkerConfig
    host: str
    port: int = 0
    gpu_share: float = 0.0  # of one GPU, reserved for it on Ray (0: CPU)
    node_group: int = 0     # workers of one group run on one node (Ray), so pages stay on it


class Launcher(Protocol):
    def gpus(self) -> Gpus: ...
    def reserve(self, slots: list[WorkerSpec]) -> None: ...   # every worker it may ever start
    def start(self, specs: list[WorkerSpec]) -> list[str]: ...
    def stop_worker(self, address: str) -> None: ...
    def stop(self) -> None: ...
    # A worker in the caller's own process, callable without gRPC; None for any other.
    def local_worker(self, address: str) -> LocalWorker | None: ...


def make_worker(spec: WorkerSpec):
    # Imported here so that a launcher process that never hosts a worker does not load the engine.
    if spec.role == "prefill":
        from services.prefill.worker import PrefillWorker
        return PrefillWorker(spec.config)
    from services.decode.worker import DecodeWorker
    return DecodeWorker(spec.config)
