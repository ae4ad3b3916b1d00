"""The front end's view of an engine that runs in another process: what workers read from
`loop.engine` in-process, served from the engine's start-up info and the stats carried by every
step message (a step stale at most, as in-process reads of a running engine are), and its
methods as handles that `EngineCoreClient.call` runs remotely."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from services.enginecore.messages import CALLABLE


@dataclass(frozen=True)
class RemoteMethod:
    name: str


class _Count:
    """Sized like the scheduler's queues (`len(scheduler.running)`), from a count."""

    def __init__(self) -> None:
        self.n = 0

    def __len__(self) -> int:
        return self.n


class RemoteScheduler:
    def __init__(self) -> None:
        self.running, self.waiting = _Count(), _Count()


class RemoteKV:
    def __init__(self, info: dict, pool: Any) -> None:
        self.block_size: int = info["block_size"]
        self.num_blocks: int = info["num_blocks"]
        self.num_free_blocks: int = info["num_blocks"]
        self.pool_bytes: int = info["pool_bytes"]
        # The shared CPU pool; for a pool on a GPU, a tensor on the meta device of its dtype and
        # shape (the page layout, no memory): the front end never initialises CUDA.
        self.hashes: list[bytes] = []
        self.kv_cache = pool if pool is not None else torch.empty(
            info["pool_shape"], dtype=getattr(torch, info["pool_dtype"]), device="meta")

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_block_hashes(self) -> list[bytes]:
        """The engine's most recent sample (core.AFFINITY_SAMPLE hashes, current after every
        reply and at most core.HASHES_EVERY_S old while stepping; resent only when changed)."""
        return self.hashes


class RemotePromptCounter:
    def __init__(self) -> None:
        self.prompt_tokens = 0


class RemoteEngine:
    def __init__(self, info: dict, pool: Any) -> None:
        self.kv = RemoteKV(info, pool)
        self.scheduler = RemoteScheduler()
        self.prompt_counter = RemotePromptCounter()
        self.max_model_len: int = info["max_model_len"]
        self.device = torch.device(info["device"])     # a name: touches no CUDA
        self.where: str = info["where"]

    def update(self, stats: list) -> None:
        running, waiting, free_blocks, prompt_tokens, hashes = stats
        self.scheduler.running.n, self.scheduler.waiting.n = running, waiting
        self.kv.num_free_blocks = free_blocks
        self.prompt_counter.prompt_tokens = prompt_tokens
        if hashes is not None:
            self.kv.hashes = hashes

    def __getattr__(self, name: str) -> RemoteMethod:
        if name in CALLABLE:
            return RemoteMethod(name)
        raise AttributeError(f"the engine runs in another process; {name!r} is not served here")
