"""Where each worker of a cluster runs, and how much of its card it may use: a pure decision from
the number of GPUs (and their memory, when known), so that it is tested with simulated machines.

- as many GPUs as workers or more: one GPU each, with the whole per-card memory fraction;
- fewer: worker i shares GPU i % G with the others placed there; each takes 1/k of the card
  (Ray's fractional `num_gpus`) and 1/k of the memory fraction;
- no GPU (or `device="cpu"`): every worker on the CPU;
- `device="cuda:N"` (or "cuda"): every worker on that one card, sharing it.

`check_fit` refuses, before anything starts, a plan whose workers cannot hold the model's
weights (read from its config) plus one KV block in their share of the card."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from services.engine.errors import ConfigError

GIB = 2**30
_RAY_GPU_STEP = 10_000      # Ray counts fractional resources in steps of 1/10,000


@dataclass(frozen=True)
class Gpus:
    """The GPUs workers may use: how many, and the memory of each (the smallest card) if known."""

    count: int = 0
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError(f"the GPU count must be >= 0, got {self.count}")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ConfigError(f"GPU memory must be > 0 bytes, got {self.memory_bytes}")


@dataclass(frozen=True)
class Placement:
    """One worker's device and budget. `gpu_share` is what Ray reserves of its GPU; the memory
    fraction is of the card's total memory, weights included (CacheConfig.gpu_memory_fraction)."""

    device: str                     # "cpu" | "cuda:N" (on Ray, the GPU Ray assigns)
    gpu_index: int | None = None
    sharing: int = 1                # workers on this device
    gpu_share: float = 0.0
    memory_fraction: float = 0.0
    budget_bytes: int | None = None  # memory_fraction x the card's memory, when known

    @property
    def on_gpu(self) -> bool:
        return self.gpu_index is not None

    def __str__(self) -> str:
        if not self.on_gpu:
            return "cpu"
        budget = f", {self.budget_bytes / GIB:.1f} GiB" if self.budget_bytes is not None else ""
        return (f"{self.device} (shared by {self.sharing}: {self.memory_fraction:.3g} of its "
                f"memory{budget})" if self.sharing > 1 else
                f"{self.device} ({self.memory_fraction:.3g} of its memory{budget})")


def place(num_workers: int, gpus: Gpus, memory_fraction: float,
          device: str | None = None) -> tuple[Placement, ...]:
    """Placements for workers 0..num_workers-1 (decode workers first, then prefill)."""
    if num_workers < 1:
        raise ConfigError(f"there must be at least one worker, got {num_workers}")
    if not 0.0 < memory_fraction <= 1.0:
        raise ConfigError(f"gpu_memory_fraction must be in (0, 1], got {memory_fraction}")
    if device == "cpu" or (device is None and gpus.count == 0):
        return tuple(Placement("cpu") for _ in range(num_workers))
    if device is not None:
        index = _cuda_index(device)
        if gpus.count and index >= gpus.count:
            raise ConfigError(f"device {device} does not exist: {gpus.count} GPU(s) visible")
        indices = [index] * num_workers
    else:
        indices = [i % gpus.count for i in range(num_workers)]
    counts = Counter(indices)
    placements = []
    for index in indices:
        k = counts[index]
        fraction = memory_fraction / k
        budget = int(gpus.memory_bytes * fraction) if gpus.memory_bytes is not None else None
        share = math.floor(_RAY_GPU_STEP / k) / _RAY_GPU_STEP
        placements.append(Placement(f"cuda:{index}", index, k, share, fraction, budget))
    return tuple(placements)


def check_fit(placements: Sequence[Placement], names: Sequence[str], weight_bytes: int,
              block_bytes: int, gpus: Gpus, model: str) -> None:
    """ConfigError, naming the card, the share and the weights, when a worker's budget cannot
    hold the weights plus one KV block. Budgets not known (a remote Ray cluster) pass: the worker
    then refuses at its own start, before it serves."""
    for placement, name in zip(placements, names):
        budget = placement.budget_bytes
        if budget is None or budget >= weight_bytes + block_bytes:
            continue
        shared = (f"{placement.sharing} workers share {placement.device}" if placement.sharing > 1
                  else f"{name} runs alone on {placement.device}")
        raise ConfigError(
            f"{shared} ({gpus.memory_bytes / GIB:.1f} GiB): {name} may use "
            f"{placement.memory_fraction:.3g} of it ({budget / GIB:.2f} GiB), but the weights of "
            f"{model} take {weight_bytes / GIB:.2f} GiB, leaving no room for a KV pool. Use fewer "
            f"workers (--prefill-workers, --decode-workers, --mode colocated), more GPUs, or a "
            f"larger --gpu-memory-fraction")


def _cuda_index(device: str) -> int:
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    return int(index or 0)
