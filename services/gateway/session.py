"""One admitted request on the workers.

Disaggregated: DecodeWorker.Reserve (the blocks are promised before any prefill starts), then
PrefillWorker.Prefill with the decode worker's kv_address (the first token comes back with it: TTFT),
then DecodeWorker.Decode streams the rest. Colocated: one Decode(prefill_here=True) with
room_tokens, the worker's check of a Reserve made as the request joins (no call before it).

While a request waits for its prefill and its pages, this gateway renews its decode reservation
(leases.py), so waiting never expires it. Failures before anything was streamed are retried on
another worker (a prefill that failed on every worker is tried again, up to
MAX_PREFILL_ATTEMPTS in all: a rejected transfer is prefilled again, never decoded). After tokens were streamed,
the request moves to another worker: disaggregated, a prefill of the prompt and the tokens
already sent lands on another decode worker; colocated, another worker computes the prompt and
those tokens again itself (Decode with prefill_here and generated_token_ids). Either way decoding
resumes after them (no duplicate, no missing token). With no worker left, the client gets
UNAVAILABLE.

Whatever way the request ends (finished, client gone, deadline, error), every worker still holding
something for it gets a Cancel, so blocks and reservations never leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc

from services import wire
from services.engine.block_pool import block_hashes
from services.engine.sampling_params import SamplingParams
from services.gateway.admission import AdmissionController, Ticket
from services.gateway.errors import RequestTimeoutError, WorkerUnavailableError
from services.gateway.leases import LeaseKeeper
from services.gateway.request import PreparedRequest
from services.gateway.routing import AFFINITY_BLOCKS, pick_prefill_worker
from services.gateway.worker_calls import is_retryable, worker_error
from services.gateway.workers import WorkerHandle, WorkerPool
from services.rpc.tandem.v1 import worker_pb2
from services.telemetry.metrics import GatewayMetrics

_CANCEL_TIMEOUT_S = 5.0
_DEADLINE_SLACK_S = 0.05   # gRPC's deadline clock and ours differ by a little
_RESUME_PREFILL = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
MAX_PREFILL_ATTEMPTS = 3   # prefills of one request, all workers together, before it fails


@dataclass
class _Attempt:
    """Workers holding something for the request right now: they get a Cancel unless it finished."""

    holders: dict[str, WorkerHandle] = field(default_factory=dict)
    prefill_tried: set[str] = field(default_factory=set)
    prefill_excluded: frozenset[str] = frozenset()    # never used (the request is pinned elsewhere)
    prefill_failures: int = 0
    calling: str = ""                       # the worker of the call in progress (calls are sequential)


class WorkerSession:
    def __init__(self, pool: WorkerPool, admission: AdmissionController, metrics: GatewayMetrics,
                 *, disaggregated: bool, kv_transport: str, reservation_ttl_s: float,
                 rpc_timeout_s: float, leases: LeaseKeeper | None = None) -> None:
        self._pool = pool
        self._leases = leases or LeaseKeeper(reservation_ttl_s, rpc_timeout_s, metrics)
        self._admission = admission
        self._metrics = metrics
        self._disaggregated = disaggregated
        self._kv_transport = kv_transport
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._rpc_timeout_s = rpc_timeout_s
        self._background: set[asyncio.Task] = set()

    async def drain(self) -> None:
        """Waits for outstanding Cancel calls and stops renewing leases (gateway shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._leases.stop()

    async def run(self, req: PreparedRequest, ticket: Ticket) -> AsyncIterator[wire.ChunkFields]:
        attempt = _Attempt(prefill_excluded=frozenset(
            w.address for w in self._pool.prefill if req.pinned_to and w.address not in req.pinned_to))
        streamed: list[int] = []          # every token the client has been sent
        try:
            while True:
                try:
                    chunks = self._attempt(req, ticket, attempt, tuple(streamed))
                    async with contextlib.aclosing(chunks):
                        async for fields in chunks:
                            streamed += fields.token_ids
                            yield fields
                            if fields.finish_reason is not None:
                                return
                    raise WorkerUnavailableError(f"worker stream for {req.request_id} ended early")
                except grpc.aio.AioRpcError as exc:
                    if time.monotonic() >= req.deadline - _DEADLINE_SLACK_S:
                        raise RequestTimeoutError(f"request timed out ({req.request_id})") from None
                    failed = attempt.calling
                    # Nothing sent yet: any worker may start afresh. Tokens sent: another worker
                    # resumes after them; seeded sampling draws by output index, so the
                    # continuation is the one the failed worker would have sent.
                    if not is_retryable(exc):
                        raise worker_error(exc, failed) from None
                    await self._cancel_all(req.request_id, attempt)
                    if failed in {w.address for w in self._pool.prefill}:
                        attempt.prefill_tried.add(failed)
                        attempt.prefill_failures += 1
                    elif not self._admission.rebook(ticket):
                        raise WorkerUnavailableError(
                            f"no decode worker could take the request after {failed} failed") from None
                    self._metrics.retries.labels("mid_stream" if streamed else "before_first_token").inc()
        finally:
            # Normal completion leaves nothing to cancel: the holders were cleared as they finished.
            if attempt.holders:
                task = asyncio.create_task(self._cancel_all(req.request_id, attempt))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _attempt(self, req: PreparedRequest, ticket: Ticket, attempt: _Attempt,
                       resume: tuple[int, ...]) -> AsyncIterator[wire.ChunkFields]:
        """One try on one decode worker; `resume` holds the tokens already sent (a retry)."""
        if not self._disaggregated:
            async with contextlib.aclosing(self._run_here(req, ticket, attempt, resume)) as chunks:
                async for fields in chunks:
                    yield fields
            return
        reserve = await self._reserve(req, ticket, attempt)
        decode = ticket.decode
        generated = resume
        async with self._leases.held(decode, req.request_id):
            first = await self._prefill(req, reserve, attempt, resume)
        if not resume:
            yield first
            if first.finish_reason is not None:
                # Ended on its first token: the reservation is not needed (holders keep decode,
                # so the finally in run() cancels it).
                return
            generated = first.token_ids
        async with contextlib.aclosing(self._decode(req, decode, attempt, generated)) as chunks:
            async for fields in chunks:
                yield fields

    async def _run_here(self, req: PreparedRequest, ticket: Ticket, attempt: _Attempt,
                        resume: tuple[int, ...]) -> AsyncIterator[wire.ChunkFields]:
        """Colocated: one Decode call runs the whole request. Its room_tokens makes the check a
        Reserve would (the worker's free blocks hold the request now) as the request joins, so
        the first token waits for no call before it; a worker without room refuses the call
        (RESOURCE_EXHAUSTED, nothing held) and the request moves on as after a refused Reserve."""
        while True:
            decode = ticket.decode
            chunks = self._decode(req, decode, attempt, resume, room_tokens=req.num_tokens)
            try:
                first = await anext(chunks)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                attempt.holders.pop(decode.address, None)
                if not self._admission.rebook(ticket):
                    # Every worker refused: the gateway's view was stale (another gateway, the
                    # growth of running requests). Wait for reports that show room.
                    await self._admission.requeue(ticket, req.deadline)
                continue
            except StopAsyncIteration:
                return
            decode.confirm(req.request_id)
            async with contextlib.aclosing(chunks):
                yield first
                async for fields in chunks:
                    yield fields
            return

    async def _decode(self, req: PreparedRequest, decode: WorkerHandle, attempt: _Attempt,
                      generated: tuple[int, ...], room_tokens: int = 0) -> AsyncIterator[wire.ChunkFields]:
        attempt.calling = decode.address
        call = decode.stub.Decode(worker_pb2.DecodeRequest(
            request_id=req.request_id, prompt_token_ids=req.prompt_token_ids,
            sampling=wire.sampling_to_proto(req.params), prefill_here=not self._disaggregated,
            generated_token_ids=generated, room_tokens=room_tokens), timeout=_remaining(req))
        attempt.holders[decode.address] = decode
        try:
            async for chunk in call:
                fields = wire.output_fields_from_chunk(chunk)
                if fields.finish_reason is not None:
                    attempt.holders.pop(decode.address, None)
                yield fields
        finally:
            call.cancel()

    async def _reserve(self, req: PreparedRequest, ticket: Ticket,
                       attempt: _Attempt) -> worker_pb2.ReserveResponse:
        while True:
            decode = ticket.decode
            attempt.holders[decode.address] = decode
            attempt.calling = decode.address
            response = await decode.stub.Reserve(
                worker_pb2.ReserveRequest(request_id=req.request_id, num_tokens=req.num_tokens,
                                          ttl_ms=self._ttl_ms),
                timeout=min(self._rpc_timeout_s, _remaining(req)))
            if response.granted:
                decode.confirm(req.request_id)
                return response
            attempt.holders.pop(decode.address, None)
            if not self._admission.rebook(ticket):
                # Every worker refused: the gateway's view was stale. Wait for reports that show
                # room (CapacityError after the queue timeout), then reserve again.
                await self._admission.requeue(ticket, req.deadline)

    async def _prefill(self, req: PreparedRequest, reserve: worker_pb2.ReserveResponse,
                       attempt: _Attempt, resume: tuple[int, ...]) -> wire.ChunkFields:
        """The first token, its pages shipped to the reserved blocks. Resuming, the pages cover
        the prompt and every sent token but the last (what Decode expects); the token sampled
        here is not used, so it is drawn greedily and may not end the request."""
        prompt, params = req.prompt_token_ids, req.params
        if resume:
            prompt, params = prompt + resume[:-1], _RESUME_PREFILL
        prefill = self._pick_prefill(prompt, attempt)
        attempt.holders[prefill.address] = prefill
        attempt.calling = prefill.address
        prefill.inflight_prompt_tokens[req.request_id] = len(prompt)
        try:
            response = await prefill.stub.Prefill(worker_pb2.PrefillRequest(
                request_id=req.request_id, prompt_token_ids=prompt,
                sampling=wire.sampling_to_proto(params), kv_address=reserve.kv_address,
                transport=self._kv_transport, kv_block_ids=reserve.block_ids),
                timeout=_remaining(req))
        finally:
            prefill.inflight_prompt_tokens.pop(req.request_id, None)
        # Pages are acknowledged by the decode side once Prefill returns: nothing left there.
        attempt.holders.pop(prefill.address, None)
        if response.kv_bytes:
            self._metrics.kv_transfer_bytes.observe(response.kv_bytes)
            self._metrics.kv_transfer_seconds.observe(response.transfer_seconds)
        fields = wire.first_token_fields(response, want_logprobs=params.logprobs is not None)
        if response.finish_reason:
            fields = wire.ChunkFields(fields.token_ids, fields.logprobs,
                                      wire.finish_reason_from_proto(response.finish_reason),
                                      fields.cached_prompt_tokens)
        return fields

    def _pick_prefill(self, prompt: tuple[int, ...], attempt: _Attempt) -> WorkerHandle:
        block_size = next((w.block_size for w in self._pool.prefill if w.block_size), 0)
        hashes = [wire.block_hash_to_wire(h) for h in
                  block_hashes(prompt[:AFFINITY_BLOCKS * block_size], block_size)
                  ] if block_size else []
        worker = pick_prefill_worker(self._pool.prefill, hashes,
                                     frozenset(attempt.prefill_tried) | attempt.prefill_excluded)
        if worker is None and attempt.prefill_failures < MAX_PREFILL_ATTEMPTS:
            # Every prefill worker failed this request once, and some are still healthy: the
            # failure was the request's (a transfer rejected as corrupt, a reservation lost),
            # not the worker's. Prefill it again rather than fail it.
            worker = pick_prefill_worker(self._pool.prefill, hashes, attempt.prefill_excluded)
        if worker is None:
            raise WorkerUnavailableError("no prefill worker is reachable")
        return worker

    async def _cancel_all(self, request_id: str, attempt: _Attempt) -> None:
        holders = list(attempt.holders.values())
        attempt.holders.clear()
        await asyncio.gather(*(self._cancel(w, request_id) for w in holders))

    async def _cancel(self, worker: WorkerHandle, request_id: str) -> None:
        try:
            await worker.stub.Cancel(worker_pb2.CancelRequest(request_id=request_id),
                                     timeout=_CANCEL_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            pass   # a dead worker holds nothing any more; a live one expires the reservation


def _remaining(req: PreparedRequest) -> float:
    return max(req.deadline - time.monotonic(), 0.001)

