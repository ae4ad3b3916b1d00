"""The block allocator and the KV cache manager: sizing, prefix hits, LRU reuse, ref counts, and
random alloc/free/share sequences checked by a hypothesis state machine."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.engine.block_pool import BlockPool, IntegrityError, block_hashes
from services.engine.config import CacheConfig, ModelConfig
from services.engine.errors import ConfigError
from services.engine.kv_cache import GpuBudget, KVCacheManager

MODEL = ModelConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=16,
                    intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
                    dtype="float32")


def make_kv(num_blocks: int = 8, block_size: int = 4, prefix: bool = True) -> KVCacheManager:
    return KVCacheManager(CacheConfig(block_size=block_size, num_blocks=num_blocks,
                                      enable_prefix_caching=prefix), MODEL)


def test_pool_layout_is_page_major():
    kv = make_kv(num_blocks=5, block_size=4)
    assert kv.kv_cache.shape == (5, 2, 2, 4, 1, 8)
    assert kv.kv_cache[3].is_contiguous()


def test_cpu_budget_sizes_the_pool():
    bytes_per_block = 2 * 2 * 4 * 1 * 8 * 4
    kv = KVCacheManager(CacheConfig(block_size=4, cpu_budget_bytes=10 * bytes_per_block + 7), MODEL)
    assert kv.num_blocks == 10 and kv.num_free_blocks == 10
    with pytest.raises(ConfigError, match="budget"):
        KVCacheManager(CacheConfig(block_size=4, cpu_budget_bytes=bytes_per_block - 1), MODEL)


def test_the_pool_takes_no_more_than_the_worker_can_use():
    bytes_per_block = 2 * 2 * 4 * 1 * 8 * 4
    config = CacheConfig(block_size=4, cpu_budget_bytes=100 * bytes_per_block, max_pool_tokens=21)
    assert KVCacheManager(config, MODEL).num_blocks == 6          # ceil(21 / 4), not 100


GIB = 2**30


def test_a_gpu_budget_is_a_share_of_the_card_less_the_weights_and_never_more_than_is_free():
    # Half of an 80 GiB card, 16 GiB of weights already allocated by this process.
    budget = GpuBudget(total_bytes=80 * GIB, free_bytes=60 * GIB, used_bytes=16 * GIB, fraction=0.5)
    assert budget.allowed_bytes == 40 * GIB and budget.pool_bytes == 24 * GIB
    # Another worker took most of the card already: the pool is what is left, not its share.
    assert GpuBudget(80 * GIB, 10 * GIB, 16 * GIB, 0.5).pool_bytes == 10 * GIB
    # A byte budget replaces the fraction.
    assert GpuBudget(80 * GIB, 60 * GIB, 16 * GIB, 0.5, budget_bytes=20 * GIB).pool_bytes == 4 * GIB
    # Weights larger than the share: no pool, and the message says why.
    short = GpuBudget(80 * GIB, 60 * GIB, 16 * GIB, 0.1)
    assert short.pool_bytes < 0
    assert "may use 8.00 GiB (gpu_memory_fraction 0.1 of 80.0 GiB), has 16.00 GiB allocated" in str(short)
    # What the steps will allocate beside the pool (activations, graph pools) comes off both
    # limits, and the message says how much.
    kept = GpuBudget(80 * GIB, 60 * GIB, 16 * GIB, 0.5, reserved_bytes=3 * GIB)
    assert kept.pool_bytes == 21 * GIB
    assert "keeps 3.00 GiB for activations and CUDA graphs" in str(kept)
    crowded = GpuBudget(80 * GIB, 10 * GIB, 16 * GIB, 0.5, reserved_bytes=3 * GIB)
    assert crowded.pool_bytes == 7 * GIB


def test_allocate_grows_and_free_returns_everything():
    kv = make_kv()
    assert kv.can_allocate("a", 9)
    kv.allocate("a", 9)
    assert len(kv.block_ids("a")) == 3 and kv.num_free_blocks == 5
    kv.allocate("a", 12)                   # still fits in three blocks
    assert len(kv.block_ids("a")) == 3
    kv.allocate("a", 13)
    assert len(kv.block_ids("a")) == 4
    assert not kv.can_allocate("b", 17)    # 5 blocks wanted, 4 free
    kv.check_integrity(["a"])
    assert kv.free("a") and not kv.free("a")
    assert kv.num_free_blocks == 8
    kv.check_integrity([])


def test_prefix_hit_shares_full_blocks_and_never_the_last_token():
    kv = make_kv()
    tokens = list(range(10))               # blocks [0..3] [4..7], partial [8, 9]
    kv.allocate("a", 10)
    kv.cache_full_blocks("a", tokens, 10)
    hit = kv.lookup_prefix(tokens)
    assert hit.num_tokens == 8 and hit.block_ids == tuple(kv.block_ids("a")[:2])
    assert kv.lookup_prefix(tokens[:8]).num_tokens == 4     # 8th token must be computed
    assert kv.lookup_prefix([99] + tokens[1:]).num_tokens == 0
    assert kv.cached_block_hashes() == block_hashes(tokens, 4)
    kv.allocate("b", 10, hit)
    assert kv.block_ids("b")[:2] == kv.block_ids("a")[:2]
    assert kv.block_ids("b")[2] != kv.block_ids("a")[2]
    kv.check_integrity(["a", "b"])
    kv.free("a")
    kv.check_integrity(["b"])
    kv.free("b")
    kv.check_integrity([])


def test_freed_cached_blocks_stay_reusable_until_evicted_lru():
    kv = make_kv(num_blocks=4)
    first, second = list(range(0, 9)), list(range(100, 109))
    for owner, tokens in (("a", first), ("b", second)):
        kv.allocate(owner, 9)              # 3 blocks each would not fit together: one at a time
        kv.cache_full_blocks(owner, tokens, 9)
        kv.free(owner)
    assert kv.lookup_prefix(second).num_tokens == 8       # most recently freed: still cached
    assert kv.lookup_prefix(first).num_tokens == 4        # its tail went first, to "b"
    hit = kv.lookup_prefix(second)
    assert kv.can_allocate("c", 9, hit)                   # revives 2 blocks, takes 1 more
    kv.allocate("c", 9, hit)
    assert kv.num_free_blocks == 1
    kv.check_integrity(["c"])


def test_the_cached_hashes_version_moves_exactly_when_the_cached_set_does():
    kv = make_kv(num_blocks=4)
    tokens = list(range(9))
    start = kv.cached_hashes_version
    kv.allocate("a", 9)
    assert kv.cached_hashes_version == start              # nothing registered yet
    kv.cache_full_blocks("a", tokens, 9)
    registered = kv.cached_hashes_version
    assert registered > start
    kv.free("a")
    kv.allocate("b", 4)                                   # the blank block: nothing evicted
    assert kv.cached_hashes_version == registered
    kv.allocate("c", 12)                                  # the rest: evicts a's full blocks
    assert kv.cached_hashes_version > registered and kv.cached_block_hashes() == []


def test_eviction_takes_the_tail_of_a_request_first():
    kv = make_kv(num_blocks=4)
    tokens = list(range(13))
    kv.allocate("a", 13)
    kv.cache_full_blocks("a", tokens, 13)
    kv.free("a")
    kv.allocate("b", 4)                    # one block: the blank one, then a's last full block
    kv.allocate("c", 4)
    assert kv.lookup_prefix(tokens).num_tokens == 8


def test_disabled_prefix_caching_never_hits():
    kv = make_kv(prefix=False)
    tokens = list(range(9))
    kv.allocate("a", 9)
    kv.cache_full_blocks("a", tokens, 9)
    assert kv.lookup_prefix(tokens).num_tokens == 0


def test_integrity_catches_leaks_and_double_release():
    kv = make_kv()
    kv.allocate("a", 5)
    with pytest.raises(IntegrityError, match="unknown owners"):
        kv.check_integrity([])
    pool = BlockPool(2)
    pool.take(1)
    pool.release([0])
    with pytest.raises(IntegrityError, match="free block"):
        pool.release([0])


def test_block_hashes_chain_on_the_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = block_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[0] != b[0] and a[1] != b[1]   # same second block, other parent
    assert block_hashes([1, 2, 3], 4) == []


class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate / grow / free / prefix-share sequences; the model is a dict of tables."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = make_kv(num_blocks=12, block_size=2)
        self.tokens: dict[str, list[int]] = {}
        self.next_id = 0

    @rule(length=st.integers(1, 9), vocab=st.integers(1, 3), data=st.data())
    def admit(self, length, vocab, data):
        tokens = data.draw(st.lists(st.integers(0, vocab), min_size=length, max_size=length))
        owner = f"r{self.next_id}"
        self.next_id += 1
        hit = self.kv.lookup_prefix(tokens)
        assert hit.num_tokens % 2 == 0 and hit.num_tokens < length
        if self.kv.can_allocate(owner, length, hit):
            free_before = self.kv.num_free_blocks
            self.kv.allocate(owner, length, hit)
            assert len(self.kv.block_ids(owner)) == -(-length // 2)
            assert self.kv.num_free_blocks <= free_before
            self.kv.cache_full_blocks(owner, tokens, length)
            self.tokens[owner] = tokens
        else:
            assert not self.kv.owns(owner)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.integers(1, 4))
    def grow(self, data, extra):
        owner = data.draw(st.sampled_from(sorted(self.tokens)))
        tokens = self.tokens[owner] + [7] * extra
        if self.kv.can_allocate(owner, len(tokens)):
            self.kv.allocate(owner, len(tokens))
            self.kv.cache_full_blocks(owner, tokens, len(tokens))
            self.tokens[owner] = tokens

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        owner = data.draw(st.sampled_from(sorted(self.tokens)))
        assert self.kv.free(owner)
        del self.tokens[owner]

    @invariant()
    def consistent(self):
        self.kv.check_integrity(self.tokens)
        held = {b for owner in self.tokens for b in self.kv.block_ids(owner)}
        assert self.kv.num_free_blocks == self.kv.num_blocks - len(held)


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_prefix_hits_hold_the_same_tokens():
    """A hit's blocks really belong to a request whose tokens start the same way."""
    kv = make_kv(num_blocks=16, block_size=2)
    kv.allocate("a", 7)
    kv.cache_full_blocks("a", [1, 2, 3, 4, 5, 6, 7], 7)
    hit = kv.lookup_prefix([1, 2, 3, 4, 9, 9, 9])
    assert hit.block_ids == tuple(kv.block_ids("a")[:2]) and hit.num_tokens == 4
