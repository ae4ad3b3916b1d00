"""Continuous batching with chunked prefill under a per-step token budget.

Each step serves the running requests first, oldest first (a decode needs one token, an unfinished
prefill its next chunk), then admits waiting requests while tokens, sequence slots and KV blocks
last. When blocks run out, the newest running request is preempted: its blocks are freed and it
waits at the front of the queue to be recomputed (prompt and the tokens it already produced), so
its output is unchanged.

A step is two halves, so that the next step can be scheduled while this one runs on the GPU:
`advance` (right after the batch is launched) counts its tokens as computed and gives each
sampling request a placeholder for the token it will get; `commit` (once the sampled ids are on
the host) puts the real tokens in and applies the stop conditions. A request whose placeholder is
still open decodes on it (the runner reads the id from the device); one certain to finish with
it (max_tokens, max_model_len, prefill-only) waits for its commit instead. A request that stops
on a token only its commit can see (EOS, a stop id) has run one step too many: that row is
dropped, and its blocks were freed by the commit."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from services.engine.config import SchedulerConfig
from services.engine.kv_cache import KVCacheManager, PrefixHit
from services.engine.request import PENDING_TOKEN, Request, RequestStatus


@dataclass(frozen=True)
class ScheduledChunk:
    """The next num_tokens tokens of one request, starting at position start."""

    request: Request
    start: int
    num_tokens: int
    block_ids: Sequence[int]

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the request's tokens, so it yields a new one."""
        return self.start + self.num_tokens == self.request.num_tokens


@dataclass(frozen=True)
class SampleSlot:
    """Where a sampling chunk's token goes: output_token_ids[output_index] of request."""

    request: Request
    output_index: int


@dataclass(frozen=True)
class ScheduledBatch:
    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[Request, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, max_model_len: int,
                 eos_token_ids: Sequence[int]) -> None:
        if config.max_num_batched_tokens is None:
            raise ValueError("the scheduler needs a step budget: SchedulerConfig.for_device")
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.held: dict[str, Request] = {}     # finished "prefilled": blocks kept for transfer
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def add_resumed(self, request: Request) -> None:
        """A request whose K/V is already in its blocks (a prefill hand-off) goes first in line."""
        self.waiting.appendleft(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.config.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        for request in list(self.running):
            if budget == 0:
                break
            if request.status != RequestStatus.RUNNING:     # preempted for an older one
                continue
            if self._awaits_final_token(request):
                continue
            num_tokens = min(request.num_uncomputed_tokens, budget)
            if self._make_room(request, num_tokens, preempted):
                chunks.append(self._chunk(request, num_tokens))
                budget -= num_tokens
        while self.waiting and budget and not preempted and len(self.running) < self.config.max_num_seqs:
            chunk = self._admit(self._next_waiting(), budget)
            if chunk is None:
                break
            chunks.append(chunk)
            budget -= chunk.num_tokens
        return ScheduledBatch(tuple(chunks), tuple(preempted))

    def _make_room(self, request: Request, num_tokens: int, preempted: list[Request]) -> bool:
        """Allocate blocks for request's next tokens, preempting the newest running requests until
        they fit. False if request itself had to be preempted."""
        if self.kv.holds(request.request_id, request.num_computed_tokens + num_tokens):
            return True     # most decode steps: the last block still has room
        while not self.kv.can_allocate(request.request_id, request.num_computed_tokens + num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        self.kv.allocate(request.request_id, request.num_computed_tokens + num_tokens)
        return True

    def _preempt(self, request: Request) -> None:
        self.num_preemptions += 1
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(request)        # victims go newest-last, so arrival order holds

    def _next_waiting(self) -> Request:
        head = self.waiting[0]
        if self.config.policy == "fcfs" or head.status == RequestStatus.PREEMPTED or self.kv.owns(head.request_id):
            return head
        return min(self.waiting, key=lambda r: r.num_prompt_tokens)    # first of equals: FCFS

    def _admit(self, request: Request, budget: int) -> ScheduledChunk | None:
        """Move a waiting request to running with its first chunk, reusing cached prefix blocks.
        None if its blocks do not fit now."""
        rid = request.request_id
        prefix = PrefixHit() if self.kv.owns(rid) else self.kv.lookup_prefix(request.all_token_ids)
        computed = max(request.num_computed_tokens, prefix.num_tokens)
        num_tokens = min(request.num_tokens - computed, budget)
        if not self.kv.can_allocate(rid, computed + num_tokens, prefix):
            return None
        self.kv.allocate(rid, computed + num_tokens, prefix)
        self.waiting.remove(request)
        if request.first_scheduled is None:
            request.num_cached_tokens = prefix.num_tokens
        request.num_computed_tokens = computed
        request.status = RequestStatus.RUNNING
        self.running.append(request)
        return self._chunk(request, num_tokens)

    def _chunk(self, request: Request, num_tokens: int) -> ScheduledChunk:
        if request.first_scheduled is None:
            request.first_scheduled = time.time()
        return ScheduledChunk(request, request.num_computed_tokens, num_tokens,
                              self.kv.block_ids(request.request_id))

    def update(self, batch: ScheduledBatch, sampled_token_ids: Sequence[int]) -> list[Request]:
        """Both halves of a step at once (a caller that waits for every batch)."""
        slots = self.advance(batch)
        return [slots[j].request for j in self.commit(batch, slots, sampled_token_ids)]

    def advance(self, batch: ScheduledBatch) -> list[SampleSlot]:
        """Right after launching batch: its tokens count as computed, and each sampling request
        holds a placeholder for its new token. Returns the slots, in batch order."""
        slots = []
        for chunk in batch.chunks:
            request = chunk.request
            request.num_computed_tokens += chunk.num_tokens
            if chunk.samples:
                slots.append(SampleSlot(request, len(request.output_token_ids)))
                request.output_token_ids.append(PENDING_TOKEN)
        return slots

    def commit(self, batch: ScheduledBatch, slots: Sequence[SampleSlot],
               sampled_token_ids: Sequence[int]) -> list[int]:
        """Once batch's sampled ids are known: fill the placeholders, register full blocks, finish
        the requests that hit a stop. Returns the indices (into slots) of the requests that got
        their token (not those finished meanwhile: aborted, or stopped by an earlier token)."""
        for chunk in batch.chunks:
            request = chunk.request
            end = chunk.start + chunk.num_tokens
            if (request.status == RequestStatus.RUNNING and end // self.kv.block_size
                    > chunk.start // self.kv.block_size):
                self.kv.cache_full_blocks(request.request_id, request.token_ids(0, end), end)
        committed = []
        for j, (slot, token_id) in enumerate(zip(slots, sampled_token_ids)):
            request = slot.request
            if request.status.is_finished:
                continue
            request.output_token_ids[slot.output_index] = token_id
            if request.first_token is None:
                request.first_token = time.time()
            status = self._stop_status(request, token_id, slot.output_index + 1)
            if status is not None:
                del request.output_token_ids[slot.output_index + 1:]     # rows run past the stop
                self.finish(request, status)
            committed.append(j)
        return committed

    def _awaits_final_token(self, request: Request) -> bool:
        """Running with its last token still a placeholder that is certain to finish it."""
        if not request.output_token_ids or request.output_token_ids[-1] != PENDING_TOKEN:
            return False
        return (request.prefill_only or len(request.output_token_ids) >= request.params.max_tokens
                or request.num_tokens >= self.max_model_len)

    def _stop_status(self, request: Request, token_id: int, num_outputs: int) -> RequestStatus | None:
        params = request.params
        if (token_id in self.eos_token_ids and not params.ignore_eos) or token_id in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if (num_outputs >= params.max_tokens
                or request.num_prompt_tokens + num_outputs >= self.max_model_len):
            return RequestStatus.FINISHED_LENGTH
        if request.prefill_only:
            return RequestStatus.FINISHED_PREFILLED
        return None

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Take request out of the queues. A prefilled request keeps its blocks until release()."""
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status == RequestStatus.FINISHED_PREFILLED:   # a stop string in its first token
            self.release(request.request_id)
        elif not request.status.is_finished:
            self.waiting.remove(request)
        request.status = status
        request.finished = time.time()
        if status == RequestStatus.FINISHED_PREFILLED:
            self.held[request.request_id] = request
        else:
            self.kv.free(request.request_id)

    def release(self, request_id: str) -> bool:
        """Free a prefilled request's blocks (its pages have been copied out)."""
        return self.held.pop(request_id, None) is not None and self.kv.free(request_id)

    def block_owners(self) -> list[str]:
        """Ids of the requests that must own blocks now (for check_integrity)."""
        return ([r.request_id for r in self.running] + list(self.held)
                + [r.request_id for r in self.waiting if r.num_computed_tokens > 0])
