"""Admission control against real WorkerHandles fed with LoadReports (no servers involved)."""

import asyncio
import time

import pytest

from services.engine.errors import CapacityError
from services.gateway.admission import AdmissionController, Ticket
from services.gateway.config import AdmissionConfig
from services.gateway.workers import WorkerPool
from services.rpc.tandem.v1 import worker_pb2
from services.telemetry.metrics import GatewayMetrics

BLOCK = 16


def make_pool(decode_free=(100,), prefill_queued=(0,), num_blocks=100) -> WorkerPool:
    pool = WorkerPool(tuple(f"127.0.0.1:{1000 + i}" for i in range(len(prefill_queued))),
                      tuple(f"127.0.0.1:{2000 + i}" for i in range(len(decode_free))),
                      poll_interval_s=0.05, rpc_timeout_s=1.0)
    for w, free in zip(pool.decode, decode_free):
        w.apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=num_blocks, free_blocks=free,
                                             role=worker_pb2.WORKER_ROLE_DECODE), time.monotonic())
    for w, queued in zip(pool.prefill, prefill_queued):
        w.apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=num_blocks, free_blocks=num_blocks,
                                             queued_prompt_tokens=queued,
                                             role=worker_pb2.WORKER_ROLE_PREFILL), time.monotonic())
    return pool


def make_admission(pool, **cfg) -> tuple[AdmissionController, GatewayMetrics]:
    metrics = GatewayMetrics()
    return AdmissionController(AdmissionConfig(**cfg), pool, metrics, disaggregated=True), metrics


def far() -> float:
    return time.monotonic() + 60


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_admits_onto_the_worker_with_most_free_blocks_and_books_it():
    pool = make_pool(decode_free=(10, 50))
    adm, metrics = make_admission(pool)
    ticket = await adm.admit("r1", "", 20, 20 + 44, far())     # 64 tokens = 4 blocks
    assert ticket.decode is pool.decode[1]
    assert pool.decode[1].available_blocks == 46
    assert sample(metrics, "tandem_admissions_total", path="immediate") == 1
    adm.release(ticket)
    assert pool.decode[1].available_blocks == 50 and adm.running == 0


async def test_a_pinned_request_is_booked_only_on_its_worker():
    pool = make_pool(decode_free=(10, 50))
    adm, _ = make_admission(pool)
    pinned = frozenset({pool.decode[0].address, "127.0.0.1:1000"})   # a decode and a prefill worker
    ticket = await adm.admit("r1", "", 20, 64, far(), pinned_to=pinned)
    assert ticket.decode is pool.decode[0]                    # not the one with more blocks
    assert not adm.rebook(ticket) and ticket.decode is None   # and never another one
    adm.release(ticket)
    assert [w.available_blocks for w in pool.decode] == [10, 50]


async def test_bookings_between_polls_do_not_double_count_blocks():
    pool = make_pool(decode_free=(8,))
    adm, _ = make_admission(pool, max_queued_requests=0)
    await adm.admit("a", "", 10, 64, far())                    # 4 blocks
    await adm.admit("b", "", 10, 64, far())                    # 4 blocks: pool now full
    with pytest.raises(CapacityError) as info:
        await adm.admit("c", "", 10, 64, far())
    assert "queued" in str(info.value) and info.value.retry_after_s > 0


async def test_confirmed_booking_leaves_ledger_when_a_later_report_shows_it():
    pool = make_pool(decode_free=(8,))
    adm, _ = make_admission(pool)
    ticket = await adm.admit("a", "", 10, 64, far())
    w = pool.decode[0]
    w.confirm("a")
    assert w.available_blocks == 4
    # The worker now reports the reservation itself: the ledger must not count it again.
    w.apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=100, free_blocks=4,
                                         reserved_blocks=4), time.monotonic())
    assert w.available_blocks == 4 and not w.bookings
    adm.release(ticket)


async def test_never_fits_is_refused_at_once():
    pool = make_pool(decode_free=(100,), num_blocks=100)       # 1600 tokens at most
    adm, metrics = make_admission(pool)
    # Refused on the coroutine's first step, before it could wait for anything (no clock needed).
    step = adm.admit("big", "", 100, 1601, far())
    with pytest.raises(CapacityError) as info:
        step.send(None)
    assert "1600" in str(info.value) and info.value.retry_after_s > 0
    assert sample(metrics, "tandem_rejections_total", reason="never_fits") == 1


async def test_queued_request_is_admitted_when_capacity_returns():
    pool = make_pool(decode_free=(4,))
    adm, metrics = make_admission(pool)
    first = await adm.admit("a", "", 10, 64, far())
    waiter = asyncio.create_task(adm.admit("b", "", 10, 64, far()))
    await asyncio.sleep(0.01)
    assert not waiter.done() and adm.queued == 1
    adm.release(first)
    pool.decode[0].apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=100, free_blocks=4),
                                time.monotonic())
    adm.on_capacity_change()
    second = await asyncio.wait_for(waiter, 1)
    assert second.decode is pool.decode[0] and adm.queued == 0
    assert sample(metrics, "tandem_admissions_total", path="queued") == 1
    adm.release(second)


async def test_queue_deadline_gives_429():
    pool = make_pool(decode_free=(0,))
    adm, metrics = make_admission(pool, queue_timeout_s=0.05)
    with pytest.raises(CapacityError):
        await adm.admit("a", "", 10, 64, far())
    assert adm.queued == 0 and adm.running == 0
    assert sample(metrics, "tandem_rejections_total", reason="queue_timeout") == 1


async def test_cancelled_while_queued_leaves_nothing_behind():
    pool = make_pool(decode_free=(0,))
    adm, _ = make_admission(pool)
    waiter = asyncio.create_task(adm.admit("a", "", 10, 64, far()))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert adm.queued == 0 and adm.running == 0 and not pool.decode[0].bookings


async def test_prefill_queue_tokens_hold_requests_back():
    pool = make_pool(decode_free=(100,), prefill_queued=(900,))
    adm, _ = make_admission(pool, max_prefill_queue_tokens=1000, max_queued_requests=0)
    with pytest.raises(CapacityError):
        await adm.admit("a", "", 200, 216, far())
    ticket = await adm.admit("b", "", 50, 66, far())
    adm.release(ticket)


async def test_tenant_bucket_refuses_with_the_time_to_refill():
    pool = make_pool()
    adm, metrics = make_admission(pool, tenant_tokens_per_s=100.0, tenant_burst_tokens=200)
    t = await adm.admit("a", "key1", 100, 150, far())
    adm.release(t)
    with pytest.raises(CapacityError) as info:
        await adm.admit("b", "key1", 100, 150, far())
    assert 0.5 < info.value.retry_after_s <= 1.0
    # Another tenant has its own bucket.
    adm.release(await adm.admit("c", "key2", 100, 150, far()))
    assert sample(metrics, "tandem_rejections_total", reason="tenant_rate") == 1


async def test_rebook_moves_to_an_untried_worker():
    pool = make_pool(decode_free=(50, 40))
    adm, _ = make_admission(pool)
    ticket = await adm.admit("a", "", 10, 64, far())
    assert ticket.decode is pool.decode[0]
    assert adm.rebook(ticket) and ticket.decode is pool.decode[1]
    assert not pool.decode[0].bookings
    assert not adm.rebook(ticket) and ticket.decode is None
    adm.release(ticket)
    assert adm.running == 0


async def test_running_limit():
    pool = make_pool()
    adm, _ = make_admission(pool, max_running_requests=1, max_queued_requests=0)
    t = await adm.admit("a", "", 1, 2, far())
    with pytest.raises(CapacityError):
        await adm.admit("b", "", 1, 2, far())
    adm.release(t)
    adm.release(t)                       # idempotent
    assert adm.running == 0


async def test_colocated_bookings_count_growth_still_ahead():
    pool = WorkerPool((), ("127.0.0.1:3000",), 0.05, 1.0, colocated=True)
    w = pool.decode[0]
    w.apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=20, free_blocks=20), time.monotonic())
    adm = AdmissionController(AdmissionConfig(max_queued_requests=0), pool, GatewayMetrics(), disaggregated=False)
    ticket = await adm.admit("a", "", 16, 160, far())             # 10 blocks
    assert w.available_blocks == 10
    # Running, it holds 3 blocks so far; 7 more may still come. Reports keep the booking.
    w.apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=20, free_blocks=17), time.monotonic())
    assert w.available_blocks == 10 and w.bookings
    adm.release(ticket)
    assert w.available_blocks == 17


async def test_no_live_decode_worker_is_unavailable_at_once():
    from services.gateway.errors import WorkerUnavailableError
    pool = make_pool()
    pool.decode[0].healthy = False
    adm, metrics = make_admission(pool)
    with pytest.raises(WorkerUnavailableError):
        await adm.admit("a", "", 1, 2, far())
    assert sample(metrics, "tandem_rejections_total", reason="no_workers") == 1


async def test_prompt_beyond_every_prefill_pool_never_fits():
    pool = make_pool(decode_free=(1000,), num_blocks=1000)
    for w in pool.prefill:
        w.report.num_blocks = 4                             # 64 tokens
    adm, metrics = make_admission(pool)
    with pytest.raises(CapacityError) as info:
        await adm.admit("a", "", 64, 80, far())
    assert "prefill" in str(info.value)
    adm.release(await adm.admit("b", "", 63, 80, far()))


async def test_requeued_ticket_waits_at_the_head_and_is_counted_once():
    pool = make_pool(decode_free=(4,))
    adm, metrics = make_admission(pool)
    first = await adm.admit("a", "", 10, 64, far())             # takes the 4 blocks
    waiting = asyncio.create_task(adm.admit("b", "", 10, 64, far()))
    await asyncio.sleep(0.01)
    # "a" was refused by every worker: it goes back in front of "b", no longer running.
    requeued = asyncio.create_task(adm.requeue(first, far()))
    await asyncio.sleep(0.01)
    assert adm.running == 0 and adm.queued == 2
    adm.on_capacity_change()                                    # room for one: the requeued first
    await asyncio.wait_for(requeued, 1)
    assert first.decode is pool.decode[0] and adm.running == 1 and not waiting.done()
    assert sample(metrics, "tandem_admissions_total", path="requeued") == 1
    adm.release(first)                                          # now "b" fits
    adm.release(await asyncio.wait_for(waiting, 1))
    assert adm.running == 0 and adm.queued == 0


async def test_requeue_timeout_leaves_nothing_counted():
    pool = make_pool(decode_free=(0,))
    adm, _ = make_admission(pool, queue_timeout_s=0.05)
    ticket = Ticket("a", "", 10, 64)
    adm._start(ticket, "immediate")
    with pytest.raises(CapacityError):
        await adm.requeue(ticket, far())
    adm.release(ticket)
    assert adm.running == 0 and adm.queued == 0


def _prefill_report(pool, computed: int, queued: int, at: float) -> None:
    w = pool.prefill[0]
    w.apply_report(worker_pb2.LoadReport(block_size=BLOCK, num_blocks=100, free_blocks=100,
                                         queued_prompt_tokens=queued, prompt_tokens_computed=computed,
                                         role=worker_pb2.WORKER_ROLE_PREFILL), at)


async def test_prefill_rate_is_learned_while_busy_only():
    from services.gateway.prefill_rate import PrefillRates
    pool, rates = make_pool(), PrefillRates()
    t = 100.0
    for computed, queued, dt in ((0, 500, 0), (1000, 500, 1.0), (1000, 0, 1.0), (1000, 0, 5.0)):
        t += dt
        _prefill_report(pool, computed, queued, t)
        rates.observe(pool.prefill, now=t)
    assert rates.tokens_per_s[pool.prefill[0].address] == pytest.approx(1000.0)  # idle: unchanged
    assert rates.wait_s(pool.prefill, 1000) == pytest.approx(1.0)               # nothing queued now
    _prefill_report(pool, 1000, 4000, t)
    assert rates.wait_s(pool.prefill, 1000) == pytest.approx(5.0)
    pool.prefill[0].healthy = False
    assert rates.wait_s(pool.prefill, 1000) is None


async def test_a_prompt_that_could_not_start_in_time_is_refused_at_once_with_its_wait():
    pool = make_pool()
    adm, metrics = make_admission(pool, max_prefill_wait_s=2.0, queue_timeout_s=1.0)
    t = time.monotonic()
    _prefill_report(pool, 0, 100, t - 2.0)
    adm.prefill_rates.observe(pool.prefill, now=t - 2.0)
    _prefill_report(pool, 200, 100, t - 1.0)           # 200 prompt tokens/s while busy
    adm.prefill_rates.observe(pool.prefill, now=t - 1.0)
    _prefill_report(pool, 200, 1000, t)                # 1,000 queued: 5 s + this prompt
    with pytest.raises(CapacityError) as info:
        await adm.admit("late", "", 100, 120, far())
    assert "wait about 5.5s for prefill" in str(info.value)
    assert info.value.retry_after_s == pytest.approx(3.5)
    assert sample(metrics, "tandem_rejections_total", reason="prefill_wait") == 1
    assert adm.running == 0 and not pool.decode[0].bookings
    # Within max_prefill_wait_s + queue_timeout_s it queues, and is let in once the queue drains.
    _prefill_report(pool, 200, 400, t)                 # 2.5 s: over 2 s, within 3 s
    waiter = asyncio.ensure_future(adm.admit("soon", "", 100, 120, far()))
    await asyncio.sleep(0.05)
    assert adm.queued == 1 and not waiter.done()
    _prefill_report(pool, 400, 100, t + 1.0)
    adm.on_capacity_change()
    ticket = await asyncio.wait_for(waiter, 1.0)
    assert ticket.decode is pool.decode[0]
    adm.release(ticket)
