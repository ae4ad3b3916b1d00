"""The paged KV pool of one worker and the per-request block tables over it.

The pool tensor is allocated once, in the page-major layout of docs/kv-layout.md:
`[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]`. Owners are requests (running,
prefilled and held for transfer, or reservations awaiting pages); the scheduler addresses them by
id and gets opaque `PrefixHit` handles, never the allocator's internals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from services.engine.block_pool import BlockPool, IntegrityError, block_hashes, chain_hash
from services.engine.config import CacheConfig, ModelConfig
from services.engine.errors import ConfigError


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class PrefixHit:
    """Cached full blocks a new request can start from. Valid only until the next allocation:
    take it with `lookup_prefix` and use it in the same scheduling decision."""

    block_ids: tuple[int, ...] = ()
    hashes: tuple[bytes, ...] = ()
    num_tokens: int = 0


def pool_num_blocks(config: CacheConfig, bytes_per_block: int, device: torch.device,
                    reserve_bytes: int = 0) -> int:
    """num_blocks if configured, else what the memory budget holds beside `reserve_bytes` (what
    the steps allocate outside the pool: memory_profile.py), capped by what the worker can ever
    use (max_pool_tokens)."""
    if config.num_blocks is not None:
        return config.num_blocks
    if device.type == "cuda":
        torch.cuda.empty_cache()        # what loading left cached but unused is not the weights
        free_bytes, total_bytes = torch.cuda.mem_get_info(device)
        budget = GpuBudget(total_bytes, free_bytes, torch.cuda.memory_reserved(device),
                           config.gpu_memory_fraction, config.gpu_memory_bytes, reserve_bytes)
        pool_bytes, where = budget.pool_bytes, f"{device}: {budget}"
    else:
        pool_bytes, where = config.cpu_budget_bytes, "cpu_budget_bytes"
    if pool_bytes < bytes_per_block:
        raise ConfigError(f"the KV memory budget ({max(0, pool_bytes)} bytes; {where}) holds no "
                          f"block of {bytes_per_block} bytes")
    blocks = pool_bytes // bytes_per_block
    if config.max_pool_tokens is not None:
        blocks = min(blocks, cdiv(config.max_pool_tokens, config.block_size))
    return blocks


@dataclass(frozen=True)
class GpuBudget:
    """One worker's share of a card: `budget_bytes` if set, else `fraction` of the card's total
    memory, weights, activations and CUDA graphs included. The pool gets that less what this
    process has allocated already (its weights) and what its steps will allocate beside the pool
    (`reserved_bytes`), and never more than is free now less that (other workers and processes
    on the card)."""

    total_bytes: int
    free_bytes: int
    used_bytes: int                  # allocated by this process before the pool
    fraction: float
    budget_bytes: int | None = None
    reserved_bytes: int = 0          # activations and graph pools, allocated after the pool

    @property
    def allowed_bytes(self) -> int:
        return self.budget_bytes if self.budget_bytes is not None else int(self.total_bytes * self.fraction)

    @property
    def pool_bytes(self) -> int:
        return min(self.allowed_bytes - self.used_bytes, self.free_bytes) - self.reserved_bytes

    def __str__(self) -> str:
        gib = 2**30
        share = (f"gpu_memory_bytes {self.budget_bytes}" if self.budget_bytes is not None
                 else f"gpu_memory_fraction {self.fraction:g} of {self.total_bytes / gib:.1f} GiB")
        return (f"this worker may use {self.allowed_bytes / gib:.2f} GiB ({share}), has "
                f"{self.used_bytes / gib:.2f} GiB allocated, keeps "
                f"{self.reserved_bytes / gib:.2f} GiB for activations and CUDA graphs, "
                f"{self.free_bytes / gib:.2f} GiB free")


class KVCacheManager:
    def __init__(self, config: CacheConfig, model_config: ModelConfig,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 reserve_bytes: int = 0) -> None:
        device = torch.device(device)
        self.block_size = config.block_size
        self.enable_prefix_caching = config.enable_prefix_caching
        page_shape = (model_config.num_layers, 2, config.block_size, model_config.num_kv_heads,
                      model_config.head_dim)
        bytes_per_block = torch.Size(page_shape).numel() * dtype.itemsize
        self.num_blocks = pool_num_blocks(config, bytes_per_block, device, reserve_bytes)
        self.kv_cache = torch.zeros((self.num_blocks, *page_shape), dtype=dtype, device=device)
        self._pool = BlockPool(self.num_blocks)
        self._tables: dict[str, list[int]] = {}
        self._hashes: dict[str, list[bytes]] = {}    # hashes of each owner's registered full blocks

    @property
    def num_free_blocks(self) -> int:
        return self._pool.num_free

    def cached_block_hashes(self) -> list[bytes]:
        """Hashes of every block a prefix hit could reuse now (for prefix-affinity routing)."""
        return self._pool.cached_hashes()

    @property
    def cached_hashes_version(self) -> int:
        """Changes whenever cached_block_hashes() would: a reader that saw this version holds them."""
        return self._pool.cached_version

    def owns(self, owner: str) -> bool:
        return owner in self._tables

    def block_ids(self, owner: str) -> list[int]:
        return self._tables.get(owner, [])

    def holds(self, owner: str, num_tokens: int) -> bool:
        """Whether owner's table already has room for num_tokens (no allocation needed)."""
        table = self._tables.get(owner)
        return table is not None and len(table) * self.block_size >= num_tokens

    def blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def lookup_prefix(self, token_ids: Sequence[int]) -> PrefixHit:
        """The longest cached run of full blocks at the start of token_ids. The last token is never
        served from the cache: it must be computed to give the logits of the next one."""
        if not self.enable_prefix_caching:
            return PrefixHit()
        block_ids, hashes = [], []
        for block_hash in block_hashes(token_ids[:len(token_ids) - 1], self.block_size):
            block_id = self._pool.lookup(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
            hashes.append(block_hash)
        return PrefixHit(tuple(block_ids), tuple(hashes), len(block_ids) * self.block_size)

    def can_allocate(self, owner: str, num_tokens: int, prefix: PrefixHit = PrefixHit()) -> bool:
        """Whether owner's table can grow to hold num_tokens (starting from prefix if new)."""
        have = len(self._tables.get(owner, prefix.block_ids))
        revived = sum(1 for b in prefix.block_ids if self._pool.ref_cnt(b) == 0)
        return max(0, self.blocks_for(num_tokens) - have) + revived <= self._pool.num_free

    def allocate(self, owner: str, num_tokens: int, prefix: PrefixHit = PrefixHit()) -> None:
        """Grow owner's table to hold num_tokens. A new owner starts from the prefix's blocks."""
        if owner not in self._tables:
            for block_id in prefix.block_ids:
                self._pool.share(block_id)
            self._tables[owner] = list(prefix.block_ids)
            self._hashes[owner] = list(prefix.hashes)
        elif prefix.block_ids:
            raise IntegrityError(f"{owner} already has blocks; a prefix applies only to a new owner")
        table = self._tables[owner]
        table.extend(self._pool.take(max(0, self.blocks_for(num_tokens) - len(table))))

    def free(self, owner: str) -> bool:
        """Return every block of owner to the pool (cached ones stay findable until evicted)."""
        table = self._tables.pop(owner, None)
        self._hashes.pop(owner, None)
        if table is None:
            return False
        self._pool.release(reversed(table))
        return True

    def cache_full_blocks(self, owner: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Register owner's blocks that are full and whose K/V is computed, so later requests
        with the same prefix can share them."""
        if not self.enable_prefix_caching:
            return
        table, hashes = self._tables[owner], self._hashes[owner]
        bs = self.block_size
        for i in range(len(hashes), num_computed_tokens // bs):
            block_hash = chain_hash(hashes[-1] if hashes else None, token_ids[i * bs:(i + 1) * bs])
            self._pool.register(table[i], block_hash)
            hashes.append(block_hash)

    def check_integrity(self, live_owners: Iterable[str] | None = None) -> None:
        """Raises IntegrityError unless every block is free or held by live owners with matching
        ref counts; with live_owners, also that no table outlived its owner."""
        if live_owners is not None and set(live_owners) != set(self._tables):
            leaked = sorted(set(self._tables) - set(live_owners))
            missing = sorted(set(live_owners) - set(self._tables))
            raise IntegrityError(f"tables of unknown owners {leaked}; owners without tables {missing}")
        self._pool.check_integrity(self._tables.values())
