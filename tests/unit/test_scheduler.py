"""The scheduler on its own, with a real KV cache manager and no model: build it with factory
helpers, feed it sampled tokens, and assert on what each step scheduled."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from services.engine.config import CacheConfig, SchedulerConfig
from services.engine.kv_cache import KVCacheManager
from services.engine.request import Request, RequestStatus
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledBatch, Scheduler
from tests.unit.test_kv_cache import MODEL

EOS = 0
_ids = itertools.count()


def create_scheduler(num_blocks: int = 64, block_size: int = 4, budget: int = 64,
                     max_seqs: int = 16, policy: str = "fcfs", max_model_len: int = 256) -> Scheduler:
    kv = KVCacheManager(CacheConfig(block_size=block_size, num_blocks=num_blocks), MODEL)
    config = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, policy=policy)
    return Scheduler(config, kv, max_model_len, eos_token_ids=(EOS,))


def create_requests(*prompt_lens: int, max_tokens: int = 4, first_token: int = 1,
                    **params) -> list[Request]:
    return [Request(f"r{next(_ids)}", list(range(first_token, first_token + n)),
                    SamplingParams(max_tokens=max_tokens, **params), arrival=0.0)
            for n in prompt_lens]


def step(sched: Scheduler, token_id: int = 5) -> ScheduledBatch:
    batch = sched.schedule()
    sched.update(batch, [token_id] * sum(c.samples for c in batch.chunks))
    sched.kv.check_integrity(sched.block_owners())
    return batch


def scheduled(batch: ScheduledBatch) -> dict[str, int]:
    return {c.request.request_id: c.num_tokens for c in batch.chunks}


def test_prefills_then_decodes_one_token_each():
    sched = create_scheduler()
    a, b = create_requests(5, 3)
    sched.add(a)
    sched.add(b)
    assert scheduled(step(sched)) == {a.request_id: 5, b.request_id: 3}
    assert scheduled(step(sched)) == {a.request_id: 1, b.request_id: 1}
    assert a.output_token_ids == [5, 5] and a.num_computed_tokens == 6


def test_requests_join_and_leave_every_step():
    sched = create_scheduler()
    a, b = create_requests(4, 4, max_tokens=2)
    sched.add(a)
    step(sched)
    sched.add(b)
    assert scheduled(step(sched)) == {a.request_id: 1, b.request_id: 4}
    assert a.status == RequestStatus.FINISHED_LENGTH and a not in sched.running
    assert scheduled(step(sched)) == {b.request_id: 1}
    assert not sched.has_unfinished() and sched.kv.num_free_blocks == sched.kv.num_blocks


def test_chunked_prefill_respects_the_token_budget():
    sched = create_scheduler(budget=6)
    a, b = create_requests(10, 4)
    sched.add(a)
    sched.add(b)
    first = step(sched)
    assert scheduled(first) == {a.request_id: 6} and not first.chunks[0].samples
    assert scheduled(step(sched)) == {a.request_id: 4, b.request_id: 2}
    assert len(a.output_token_ids) == 1 and not b.output_token_ids
    assert scheduled(step(sched)) == {a.request_id: 1, b.request_id: 2}
    assert len(b.output_token_ids) == 1


def test_max_num_seqs_caps_the_batch():
    sched = create_scheduler(max_seqs=2)
    for r in create_requests(2, 2, 2):
        sched.add(r)
    assert len(step(sched).chunks) == 2 and len(sched.waiting) == 1


def test_shortest_prompt_first_policy():
    sched = create_scheduler(budget=8, max_seqs=1, policy="shortest_prompt_first")
    long, short, mid = create_requests(7, 2, 4, max_tokens=1)
    for r in (long, short, mid):
        sched.add(r)
    order = [next(iter(scheduled(step(sched)))) for _ in range(3)]
    assert order == [short.request_id, mid.request_id, long.request_id]


def test_fcfs_keeps_arrival_order():
    sched = create_scheduler(budget=8, max_seqs=1)
    reqs = create_requests(7, 2, 4, max_tokens=1)
    for r in reqs:
        sched.add(r)
    assert [next(iter(scheduled(step(sched)))) for _ in range(3)] == [r.request_id for r in reqs]


def test_stop_conditions():
    sched = create_scheduler()
    eos, stop_id, ignore = create_requests(3, 3, 3, max_tokens=5)
    stop_id.params = SamplingParams(max_tokens=5, stop_token_ids=(9,))
    ignore.params = SamplingParams(max_tokens=2, ignore_eos=True)
    for r in (eos, stop_id, ignore):
        sched.add(r)
    step(sched, token_id=EOS)
    assert eos.status == RequestStatus.FINISHED_STOPPED and eos.output_token_ids == [EOS]
    assert ignore.status == RequestStatus.RUNNING
    step(sched, token_id=9)
    assert stop_id.status == RequestStatus.FINISHED_STOPPED
    assert ignore.status == RequestStatus.FINISHED_LENGTH and ignore.output_token_ids == [EOS, 9]


def test_preemption_frees_the_newest_and_recomputes_it_with_its_output():
    sched = create_scheduler(num_blocks=4, block_size=4)
    a, b = create_requests(7, 7, max_tokens=6)
    b.prompt_token_ids = [50 + t for t in b.prompt_token_ids]    # no shared prefix
    sched.add(a)
    sched.add(b)
    step(sched)                                  # 2 blocks each: the pool is full
    step(sched)                                  # position 7 still fits in block 2
    batch = step(sched)                          # a needs a third block for position 8
    assert [r.request_id for r in batch.preempted] == [b.request_id]
    assert scheduled(batch) == {a.request_id: 1}
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert sched.waiting[0] is b and len(b.output_token_ids) == 2
    while a.status == RequestStatus.RUNNING:
        assert b.request_id not in scheduled(step(sched))
    resumed = step(sched)
    # b's first block survived in the prefix cache (its tail was evicted first); the rest of its
    # prompt and its two outputs are recomputed, then it samples its third token.
    assert scheduled(resumed) == {b.request_id: 5} and resumed.chunks[0].start == 4
    assert len(b.output_token_ids) == 3
    while sched.has_unfinished():
        step(sched)
    assert len(b.output_token_ids) == 6 and sched.kv.num_free_blocks == 4


def test_a_request_alone_that_cannot_grow_preempts_itself():
    sched = create_scheduler(num_blocks=3, block_size=4)
    (a,) = create_requests(7, max_tokens=4)
    sched.kv.allocate("reserved", 4)             # a reservation holds one block
    sched.add(a)
    for _ in range(2):                           # prefill, then position 7 in block 2
        batch = sched.schedule()
        sched.update(batch, [5])
    batch = sched.schedule()                     # position 8 needs a third block
    assert batch.preempted == (a,) and batch.chunks == ()
    assert a.status == RequestStatus.PREEMPTED and sched.waiting[0] is a
    sched.kv.check_integrity(["reserved"])
    assert sched.schedule().chunks == ()         # still no room
    sched.kv.free("reserved")
    resumed = step(sched)            # its two full blocks were still cached: one token to redo
    assert scheduled(resumed) == {a.request_id: 1} and resumed.chunks[0].start == 8


def test_prefix_cache_hit_skips_cached_blocks():
    sched = create_scheduler(block_size=4)
    (a,) = create_requests(10, max_tokens=1)
    sched.add(a)
    step(sched)
    (b,) = create_requests(11, max_tokens=1)
    sched.add(b)
    batch = step(sched)
    assert scheduled(batch) == {b.request_id: 3} and batch.chunks[0].start == 8
    assert b.num_cached_tokens == 8


def test_prefill_only_finishes_prefilled_and_keeps_its_blocks():
    sched = create_scheduler()
    (a,) = create_requests(6, max_tokens=8)
    a.prefill_only = True
    sched.add(a)
    step(sched)
    assert a.status == RequestStatus.FINISHED_PREFILLED and sched.held == {a.request_id: a}
    assert len(sched.kv.block_ids(a.request_id)) == 2 and not sched.has_unfinished()
    assert sched.release(a.request_id) and not sched.release(a.request_id)
    assert sched.kv.num_free_blocks == sched.kv.num_blocks


@settings(max_examples=60, deadline=None)
@given(prompt_lens=st.lists(st.integers(1, 30), min_size=1, max_size=8),
       max_tokens=st.integers(1, 12), num_blocks=st.integers(12, 40),
       budget=st.integers(1, 40), max_seqs=st.integers(1, 6),
       policy=st.sampled_from(["fcfs", "shortest_prompt_first"]),
       gaps=st.lists(st.integers(0, 5), min_size=8, max_size=8))
def test_random_workloads_always_finish_within_limits(prompt_lens, max_tokens, num_blocks, budget,
                                                      max_seqs, policy, gaps):
    """Any mix of prompts, arrival times, pool size and budget: every step respects the budget
    and the sequence cap, the cache stays consistent, and every request gets all its tokens."""
    sched = create_scheduler(num_blocks=num_blocks, block_size=4, budget=budget,
                             max_seqs=max_seqs, policy=policy)
    requests = create_requests(*prompt_lens, max_tokens=max_tokens)
    for r in requests:
        r.prompt_token_ids = [t % 3 + 1 for t in r.prompt_token_ids]   # shared prefixes
    arrivals = list(itertools.accumulate(gaps[:len(requests)]))
    for step_index in range(1000):
        for r, at in zip(requests, arrivals):
            if at == step_index:
                sched.add(r)
        if step_index > arrivals[-1] and not sched.has_unfinished():
            break
        batch = step(sched)
        assert batch.num_tokens <= budget and len(batch.chunks) <= max_seqs
        assert len({c.request.request_id for c in batch.chunks}) == len(batch.chunks)
    assert not sched.has_unfinished()
    assert all(len(r.output_token_ids) == max_tokens for r in requests)
    assert sched.kv.num_free_blocks == num_blocks
