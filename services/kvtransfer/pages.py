"""What a KV transfer moves: some pages (blocks) of one worker's pool, in order.

A page is `kv_cache[block_id]`, one contiguous span (docs/kv-layout.md), so a transfer is a list
of whole pages and every transport moves, checks and lands the same unit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from services.engine.errors import KVTransferError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise KVTransferError(f"dtype {dtype} cannot be shipped (known: {sorted(DTYPES)})")


@dataclass(frozen=True)
class PageLayout:
    """The shape and dtype of one page; sender and receiver must agree on it exactly."""

    dtype: str
    page_shape: tuple[int, ...]

    @classmethod
    def of_pool(cls, kv_cache: torch.Tensor) -> "PageLayout":
        return cls(dtype_name(kv_cache.dtype), tuple(kv_cache.shape[1:]))

    @property
    def page_bytes(self) -> int:
        return torch.Size(self.page_shape).numel() * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class PageRun:
    """Pages of a prefilled request on the sending side, and where they go on the receiving side.

    `dst_block_ids` are the blocks the decode worker reserved (empty: the receiver uses its
    reservation for request_id). `num_tokens` is how many tokens of K/V the pages hold."""

    request_id: str
    kv_cache: torch.Tensor
    block_ids: tuple[int, ...]
    num_tokens: int
    dst_block_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_ids", tuple(self.block_ids))
        object.__setattr__(self, "dst_block_ids", tuple(self.dst_block_ids))
        if not self.block_ids:
            raise KVTransferError(f"request {self.request_id}: no pages to send")
        if self.dst_block_ids and len(self.dst_block_ids) < len(self.block_ids):
            raise KVTransferError(f"request {self.request_id}: {len(self.block_ids)} pages but only "
                                  f"{len(self.dst_block_ids)} destination blocks")

    @property
    def layout(self) -> PageLayout:
        return PageLayout.of_pool(self.kv_cache)

    @property
    def num_bytes(self) -> int:
        return len(self.block_ids) * self.layout.page_bytes


def page_bytes_view(kv_cache: torch.Tensor, block_id: int) -> memoryview:
    """The bytes of one page without a copy (the pool is contiguous and on the host)."""
    page = kv_cache[block_id]
    return memoryview(page.view(torch.uint8).reshape(-1).numpy())


def host_pages(kv_cache: torch.Tensor, block_ids: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """A host tensor holding the pages and the index of each block in it. On the host the pool
    itself is returned (no copy); on a GPU the pages are gathered on the device and copied to
    the host once, into pinned memory (torch caches it: a pageable copy would be staged through
    a bounce buffer at a fraction of the link's rate)."""
    if kv_cache.device.type == "cpu":
        return kv_cache, list(block_ids)
    index = torch.tensor(list(block_ids), device=kv_cache.device)
    gathered = kv_cache.index_select(0, index)
    host = torch.empty(gathered.shape, dtype=gathered.dtype, pin_memory=True)
    host.copy_(gathered)
    return host, list(range(len(block_ids)))


def stripes(num_pages: int, page_bytes: int, max_stripes: int, min_stripe_bytes: int) -> list[range]:
    """Splits a transfer's pages into at most max_stripes consecutive runs of nearly equal size,
    none smaller than min_stripe_bytes (so a small transfer stays one stream)."""
    by_size = max(1, (num_pages * page_bytes) // max(1, min_stripe_bytes))
    count = max(1, min(max_stripes, num_pages, by_size))
    base, extra = divmod(num_pages, count)
    out, first = [], 0
    for i in range(count):
        n = base + (1 if i < extra else 0)
        out.append(range(first, first + n))
        first += n
    return out
