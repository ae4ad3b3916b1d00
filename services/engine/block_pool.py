"""The block (page) allocator: reference counts, an O(1) LRU free queue and the prefix-cache map.

A block is in exactly one of three states: owned (ref_cnt > 0), free and still cached (ref_cnt 0,
has a hash, in the free queue, reusable by a later prefix hit), or free and blank. A free block is
only overwritten when it reaches the head of the free queue, so the least recently freed cached
pages are the first evicted."""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence


def chain_hash(parent: bytes | None, block_token_ids: Sequence[int]) -> bytes:
    """Hash of a full block: its parent block's hash and its own token ids, so equal hashes mean
    equal prefixes. Stable across processes (unlike hash()), so a router can compare them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(parent or b"")
    digest.update(array("q", block_token_ids).tobytes())
    return digest.digest()


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """Chained hashes of every full block of token_ids."""
    hashes: list[bytes] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        hashes.append(chain_hash(hashes[-1] if hashes else None, token_ids[start:start + block_size]))
    return hashes


class IntegrityError(AssertionError):
    """The pool's bookkeeping is inconsistent: a leak, a double owner or a wrong count."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._ref_cnt = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        # Least recently freed first. An OrderedDict is a hash map threaded by a doubly linked
        # list: popping the head, appending and removing from the middle are all O(1).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}
        self.cached_version = 0     # bumped whenever the cached set changes (readers ship it then)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def ref_cnt(self, block_id: int) -> int:
        return self._ref_cnt[block_id]

    def take(self, n: int) -> list[int]:
        """n blocks off the head of the free queue, each with one reference. Evicts their hashes."""
        if n > len(self._free):
            raise IntegrityError(f"take({n}) with only {len(self._free)} free blocks")
        taken = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self._ref_cnt[block_id] = 1
            taken.append(block_id)
        return taken

    def share(self, block_id: int) -> None:
        """One more reference to a cached block (a prefix hit); revives it if it was free."""
        if self._ref_cnt[block_id] == 0:
            del self._free[block_id]
        self._ref_cnt[block_id] += 1

    def release(self, block_ids: Iterable[int]) -> None:
        """Drop one reference to each; blocks reaching zero join the tail of the free queue in the
        given order (so pass a request's blocks last-first: its tail is evicted before its prefix)."""
        for block_id in block_ids:
            if self._ref_cnt[block_id] <= 0:
                raise IntegrityError(f"release of free block {block_id}")
            self._ref_cnt[block_id] -= 1
            if self._ref_cnt[block_id] == 0:
                self._free[block_id] = None

    def cached_hashes(self) -> list[bytes]:
        return list(self._cached)

    def lookup(self, block_hash: bytes) -> int | None:
        return self._cached.get(block_hash)

    def register(self, block_id: int, block_hash: bytes) -> None:
        """Make a full, computed block findable by its hash. A second copy of the same content
        (computed before the first was registered) stays private rather than replacing it."""
        if self._hash[block_id] is None and block_hash not in self._cached:
            self._hash[block_id] = block_hash
            self._cached[block_hash] = block_id
            self.cached_version += 1

    def _evict(self, block_id: int) -> None:
        block_hash = self._hash[block_id]
        if block_hash is not None:
            del self._cached[block_hash]
            self._hash[block_id] = None
            self.cached_version += 1

    def check_integrity(self, owners: Iterable[Sequence[int]]) -> None:
        """owners: the block list of every live owner. Every block must be free xor owned, with a
        ref count equal to the number of owners holding it, and the hash map must be two-way."""
        refs: Counter[int] = Counter()
        for blocks in owners:
            if len(set(blocks)) != len(blocks):
                raise IntegrityError(f"an owner holds a block twice: {list(blocks)}")
            refs.update(blocks)
        for block_id in range(self.num_blocks):
            if self._ref_cnt[block_id] != refs[block_id]:
                raise IntegrityError(f"block {block_id}: ref_cnt {self._ref_cnt[block_id]}, "
                                     f"held by {refs[block_id]} owners")
            if (self._ref_cnt[block_id] == 0) != (block_id in self._free):
                raise IntegrityError(f"block {block_id}: ref_cnt {self._ref_cnt[block_id]} but "
                                     f"{'in' if block_id in self._free else 'not in'} the free queue")
            block_hash = self._hash[block_id]
            if block_hash is not None and self._cached.get(block_hash) != block_id:
                raise IntegrityError(f"block {block_id}: its hash maps elsewhere")
        for block_hash, block_id in self._cached.items():
            if self._hash[block_id] != block_hash:
                raise IntegrityError(f"hash map points at block {block_id}, which has another hash")
