"""Ways to run a cluster's workers: in this process (threads), as local processes, or as Ray
actors. Each launcher says which GPUs its workers can use (`gpus()`), starts a list of
`WorkerSpec`s and returns their gRPC addresses, in order; `stop()` stops everything it started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestration.placement import Gpus
from services.worker.config import WorkerConfig

ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class WorkerSpec:
    role: str               # "prefill" | "decode" (a colocated worker is a decode worker)
    config: WorkerConfig
    host: str
    port: int = 0
    gpu_share: float = 0.0  # of one GPU, reserved for it on Ray (0: CPU)


class Launcher(Protocol):
    def gpus(self) -> Gpus: ...
    def start(self, specs: list[WorkerSpec]) -> list[str]: ...
    def stop(self) -> None: ...


def make_worker(spec: WorkerSpec):
    # Imported here so that a launcher process that never hosts a worker does not load the engine.
    if spec.role == "prefill":
        from services.prefill.worker import PrefillWorker
        return PrefillWorker(spec.config)
    from services.decode.worker import DecodeWorker
    return DecodeWorker(spec.config)
