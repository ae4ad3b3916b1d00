"""Routing decisions as pure functions of WorkerHandles and their load reports."""

import time

from services.gateway.routing import (largest_pool_tokens, pick_prefill_worker,
                                      rank_decode_workers)
from services.gateway.workers import WorkerPool
from services.rpc.tandem.v1 import worker_pb2


def pool_with(decode=(), prefill=()) -> WorkerPool:
    pool = WorkerPool(tuple(f"p{i}:1" for i in range(len(prefill))),
                      tuple(f"d{i}:1" for i in range(len(decode))), 0.05, 1.0)
    for w, report in zip(pool.decode + pool.prefill, list(decode) + list(prefill)):
        w.apply_report(report, time.monotonic())
    return pool


def decode_report(free, reserved=0, running=0, num_blocks=100):
    return worker_pb2.LoadReport(block_size=16, num_blocks=num_blocks, free_blocks=free,
                                 reserved_blocks=reserved, running_requests=running)


def prefill_report(queued, hashes=()):
    return worker_pb2.LoadReport(block_size=16, queued_prompt_tokens=queued, cached_block_hashes=hashes)


async def test_decode_ranking_most_available_first_then_least_running():
    pool = pool_with(decode=[decode_report(30), decode_report(50, running=1),
                             decode_report(50, running=3), decode_report(2)])
    ranked = rank_decode_workers(pool.decode, num_tokens=64)
    assert [w.address for w in ranked] == ["d1:1", "d2:1", "d0:1"]     # d3 cannot hold 4 blocks
    assert rank_decode_workers(pool.decode, 64, exclude=frozenset({"d1:1"}))[0].address == "d2:1"


async def test_unhealthy_decode_worker_is_skipped():
    pool = pool_with(decode=[decode_report(90), decode_report(10)])
    pool.decode[0].healthy = False
    assert [w.address for w in rank_decode_workers(pool.decode, 16)] == ["d1:1"]


async def test_largest_pool():
    pool = pool_with(decode=[decode_report(1, num_blocks=10), decode_report(1, num_blocks=20)])
    assert largest_pool_tokens(pool.decode) == 320


async def test_prefill_least_queued_tokens():
    pool = pool_with(prefill=[prefill_report(500), prefill_report(100), prefill_report(300)])
    assert pick_prefill_worker(pool.prefill, []).address == "p1:1"


async def test_prefill_inflight_tokens_count_before_the_next_report():
    pool = pool_with(prefill=[prefill_report(0), prefill_report(10)])
    pool.prefill[0].inflight_prompt_tokens["r"] = 1000
    assert pick_prefill_worker(pool.prefill, []).address == "p1:1"


async def test_prefix_affinity_wins_unless_the_queue_is_much_longer():
    pool = pool_with(prefill=[prefill_report(0), prefill_report(200, hashes=(11, 12, 13))])
    assert pick_prefill_worker(pool.prefill, [11, 12, 99]).address == "p1:1"
    assert pick_prefill_worker(pool.prefill, [99, 11]).address == "p0:1"   # leading block not cached
    pool.prefill[1].apply_report(prefill_report(100_000, hashes=(11, 12, 13)), time.monotonic())
    assert pick_prefill_worker(pool.prefill, [11, 12]).address == "p0:1"


async def test_no_prefill_worker():
    pool = pool_with(prefill=[prefill_report(0)])
    assert pick_prefill_worker(pool.prefill, [], exclude=frozenset({"p0:1"})) is None
