"""Admission control: admit now, queue (bounded, with a deadline), or refuse with a retry-after.

The decision is synchronous and touches only in-memory state, so it takes microseconds. It counts
what actually runs out:
- decode KV blocks: a request is admitted only onto a decode worker whose available blocks (free,
  minus the worker's reservations, minus this gateway's bookings the last report does not show yet)
  hold its prompt + max_tokens; the booking is made in the same step, so two requests admitted
  between polls never count the same blocks;
- prefill queue tokens (disaggregated mode), and the time they take: the queued tokens over the
  prefill workers' measured rate (prefill_rate.py). A prompt that would wait longer than
  max_prefill_wait_s queues here; one that could not start even after the queue timeout is
  refused at once, with that wait as its retry-after (its reservation would otherwise sit idle);
- the number of running requests;
- the tenant's token bucket (prompt + max_tokens per API key).
A request that can never fit (more tokens than the largest decode pool holds) is refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from services.engine.errors import CapacityError
from services.gateway.config import AdmissionConfig
from services.gateway.errors import WorkerUnavailableError
from services.gateway.prefill_rate import PrefillRates
from services.gateway.routing import blocks_for, largest_pool_tokens, rank_decode_workers
from services.gateway.token_bucket import TenantBuckets
from services.gateway.workers import WorkerHandle, WorkerPool
from services.telemetry.metrics import GatewayMetrics


@dataclass
class Ticket:
    """An admitted request's claim: the decode worker booked for it, and what it counts against."""

    request_id: str
    tenant: str = field(repr=False)          # the API key: never printed
    prompt_tokens: int
    num_tokens: int                          # prompt + max_tokens: the KV it may grow to
    decode: WorkerHandle | None = None
    tried: set[str] = field(default_factory=set)
    excluded: frozenset[str] = frozenset()   # never booked here (a request pinned elsewhere)
    running: bool = False                    # counted among the running requests
    released: bool = False


class AdmissionController:
    def __init__(self, config: AdmissionConfig, pool: WorkerPool, metrics: GatewayMetrics,
                 disaggregated: bool) -> None:
        self._config = config
        self._pool = pool
        self._metrics = metrics
        self._disaggregated = disaggregated
        self._buckets = TenantBuckets(config.tenant_tokens_per_s, config.tenant_burst_tokens)
        # (ticket, admitted future, path): path is "queued", or "requeued" for one sent back
        self._queue: collections.deque[tuple[Ticket, asyncio.Future, str]] = collections.deque()
        self._running = 0
        self.prefill_rates = PrefillRates()

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def largest_request_tokens(self) -> int:
        """Prompt + max_tokens of the largest request a decode worker could ever hold."""
        return largest_pool_tokens(self._pool.decode)

    @property
    def reported_max_model_len(self) -> int:
        """The longest request the workers take, from their load reports (0: none yet)."""
        return self._pool.max_model_len

    async def admit(self, request_id: str, tenant: str, prompt_tokens: int, num_tokens: int,
                    deadline: float, pinned_to: frozenset[str] = frozenset()) -> Ticket:
        """A ticket booked on a decode worker (one of `pinned_to` if given), or CapacityError.
        `deadline` is time.monotonic()."""
        excluded = frozenset(w.address for w in self._pool.decode
                             if pinned_to and w.address not in pinned_to)
        ticket = Ticket(request_id, tenant, prompt_tokens, num_tokens, excluded=excluded)
        self._require_live_workers()
        largest = self.largest_request_tokens
        if num_tokens > largest:
            self._reject("never_fits")
            raise CapacityError(
                f"prompt + max_tokens is {num_tokens} tokens; the largest decode KV pool holds "
                f"{largest} tokens: lower max_tokens or shorten the prompt",
                retry_after_s=self._config.retry_after_s)
        if self._disaggregated:
            largest_prefill = largest_pool_tokens(self._pool.prefill)
            # The prefill side holds the prompt (plus its first token) until the pages are shipped.
            if prompt_tokens + 1 > largest_prefill:
                self._reject("never_fits")
                raise CapacityError(f"the prompt is {prompt_tokens} tokens; the largest prefill KV pool "
                                    f"holds {largest_prefill} tokens: shorten the prompt",
                                    retry_after_s=self._config.retry_after_s)
        wait = self._buckets.try_take(tenant, num_tokens)
        if wait:
            self._reject("tenant_rate")
            raise CapacityError(
                f"tenant token rate exceeded ({self._config.tenant_tokens_per_s:g} tokens/s, burst "
                f"{self._config.tenant_burst_tokens}); this request needs {num_tokens}",
                retry_after_s=wait if wait != float("inf") else self._config.retry_after_s)
        self._refuse_if_prefill_too_far(ticket)
        if not self._queue and self._try_book(ticket):
            self._start(ticket, "immediate")
            return ticket
        if len(self._queue) >= self._config.max_queued_requests:
            self._buckets.refund(tenant, num_tokens)
            self._reject("queue_full")
            raise CapacityError(f"server busy: {len(self._queue)} requests already queued "
                                f"(max_queued_requests={self._config.max_queued_requests})",
                                retry_after_s=self._config.retry_after_s)
        return await self._wait_in_queue(ticket, deadline, "queued")

    async def requeue(self, ticket: Ticket, deadline: float) -> None:
        """Every decode worker refused what the gateway's view said would fit (the view was stale:
        another gateway, or a colocated worker's growth): back to the head of the queue until
        reports show room, then the caller reserves again; CapacityError after the queue timeout."""
        if ticket.decode is not None:
            ticket.decode.unbook(ticket.request_id)
            ticket.decode = None
        ticket.tried.clear()
        self._stop_running(ticket)                 # counted again when admitted from the queue
        self._pool.request_poll()
        await self._wait_in_queue(ticket, deadline, "requeued")

    async def _wait_in_queue(self, ticket: Ticket, deadline: float, path: str) -> Ticket:
        future = asyncio.get_running_loop().create_future()
        entry = (ticket, future, path)
        if path == "requeued":
            self._queue.appendleft(entry)          # it was admitted before anyone waiting now
        else:
            self._queue.append(entry)
        self._metrics.queue_depth.set(len(self._queue))
        timeout = min(self._config.queue_timeout_s, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(future), max(timeout, 0.0))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():
                # Admitted in the same instant the wait ended: hand the booking back.
                self.release(ticket)
            else:
                future.cancel()
                self._remove(entry)
            self._buckets.refund(ticket.tenant, ticket.num_tokens)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._reject("queue_timeout")
            raise CapacityError(f"no capacity within {timeout:.3g}s (queue_timeout_s="
                                f"{self._config.queue_timeout_s:g})",
                                retry_after_s=self._config.retry_after_s) from None
        return ticket

    def _remove(self, entry) -> None:
        try:
            self._queue.remove(entry)
        except ValueError:
            pass
        self._metrics.queue_depth.set(len(self._queue))

    def _start(self, ticket: Ticket, path: str) -> None:
        ticket.running = True
        self._running += 1
        self._metrics.running.set(self._running)
        self._metrics.admissions.labels(path).inc()
        self._metrics.prompt_tokens.inc(ticket.prompt_tokens)

    def _reject(self, reason: str) -> None:
        self._metrics.rejections.labels(reason).inc()

    def _require_live_workers(self) -> None:
        """Waiting is pointless when a whole kind of worker is down: say so at once."""
        kinds = [("decode", self._pool.decode)] + ([("prefill", self._pool.prefill)] if self._disaggregated else [])
        for kind, workers in kinds:
            if not any(w.healthy for w in workers):
                self._reject("no_workers")
                raise WorkerUnavailableError(f"no {kind} worker is reachable",
                                             retry_after_s=self._config.retry_after_s)

    def prefill_wait_s(self, prompt_tokens: int) -> float | None:
        """Estimated seconds before a prompt admitted now starts prefill; None: unknown."""
        if not self._disaggregated:
            return None
        return self.prefill_rates.wait_s(self._pool.prefill, prompt_tokens)

    def _refuse_if_prefill_too_far(self, ticket: Ticket) -> None:
        wait = self.prefill_wait_s(ticket.prompt_tokens)
        limit = self._config.max_prefill_wait_s
        if wait is None or wait <= limit + self._config.queue_timeout_s:
            return
        self._buckets.refund(ticket.tenant, ticket.num_tokens)
        self._reject("prefill_wait")
        raise CapacityError(f"server busy: this prompt would wait about {wait:.1f}s for prefill "
                            f"(max_prefill_wait_s={limit:g}, queue_timeout_s="
                            f"{self._config.queue_timeout_s:g})", retry_after_s=wait - limit)

    def _has_room(self, ticket: Ticket) -> bool:
        if self._running >= self._config.max_running_requests:
            return False
        if self._disaggregated:
            queued = sum(w.queued_prompt_tokens for w in self._pool.prefill if w.healthy)
            if queued and queued + ticket.prompt_tokens > self._config.max_prefill_queue_tokens:
                return False
            wait = self.prefill_wait_s(ticket.prompt_tokens)
            if queued and wait is not None and wait > self._config.max_prefill_wait_s:
                return False
        return True

    def _try_book(self, ticket: Ticket) -> bool:
        return self._has_room(ticket) and self._book_best(ticket)

    def _book_best(self, ticket: Ticket) -> bool:
        """Books the best decode worker not tried yet for this request, if one can hold it."""
        ranked = rank_decode_workers(self._pool.decode, ticket.num_tokens,
                                     frozenset(ticket.tried) | ticket.excluded)
        if not ranked:
            return False
        ticket.decode = ranked[0]
        ticket.decode.book(ticket.request_id, blocks_for(ticket.num_tokens, ticket.decode.block_size))
        return True

    def rebook(self, ticket: Ticket) -> bool:
        """The booked worker refused or failed: book another one not tried yet (no queueing)."""
        if ticket.decode is not None:
            ticket.tried.add(ticket.decode.address)
            ticket.decode.unbook(ticket.request_id)
            ticket.decode = None
        return self._book_best(ticket)

    def release(self, ticket: Ticket) -> None:
        """The request is over (any path): its booking leaves the ledger, queued requests may fit."""
        if ticket.released:
            return
        ticket.released = True
        if ticket.decode is not None:
            ticket.decode.unbook(ticket.request_id)
        self._stop_running(ticket)
        if self._queue:
            # Someone waits for capacity: learn of the freed blocks now, not at the next tick.
            self._pool.request_poll()
            self.on_capacity_change()

    def _stop_running(self, ticket: Ticket) -> None:
        if ticket.running:
            ticket.running = False
            self._running -= 1
            self._metrics.running.set(self._running)

    def on_capacity_change(self) -> None:
        """Admits queued requests, oldest first, while they fit."""
        if self._disaggregated:
            self.prefill_rates.observe(self._pool.prefill)
        while self._queue:
            ticket, future, path = self._queue[0]
            if future.done():
                self._queue.popleft()
                continue
            if not self._try_book(ticket):
                break
            self._queue.popleft()
            self._start(ticket, path)
            future.set_result(None)
        self._metrics.queue_depth.set(len(self._queue))
