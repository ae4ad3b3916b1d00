"""The gateway's warm path: before it reports SERVING (gRPC health, /health) the gateway sends a
few real requests through its own full path to every worker: tokenize, admission, routing,
Reserve, Prefill, the KV transfer, Decode, detokenize. What happens once per worker or per pair
of workers then happens before any user waits for it: the first call of each RPC, a prefill
worker's choice of transport towards a decode worker and, on one node, the mapping of the decode
pool through CUDA IPC and the first page copy, a decode worker's first landed pages.

One request per route, all at once: every prefill -> decode pair (disaggregated) or every worker
(colocated), each pinned to its route. They run on a routing core of their own (admission,
session, service over the same worker pool) that records into a metrics registry of its own, so
the gateway's metrics count users only. Then the gateway waits until every worker reports its
KV pool fully free, nothing reserved, queued or running, and its integrity check clean. Each
prompt and its output fit in one page, so no page is ever full: nothing lands in a prefix cache
(which routing reads), and the workers are left as they were but for their counters.

All of it is bounded by `timeout_s`: past it, or on any failure, the gateway logs a warning and
serves anyway (a worker that does not answer is for the load poll to take out of routing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from services.engine.sampling_params import SamplingParams
from services.gateway.service import GenerationService
from services.gateway.workers import WorkerHandle, WorkerPool
from services.rpc.tandem.v1 import worker_pb2

log = logging.getLogger(__name__)

WARM_TEXT = ("Tandem warms up its path: tokenize, admit, route, prefill, ship the pages, decode, "
             "detokenize. ")
MAX_TOKENS = 4
_POLL_S = 0.02
_LOAD_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WarmPathReport:
    routes: int
    completed: int                # requests that streamed to their end
    seconds: float
    slowest_first_token_s: float  # the longest time to a first token among them
    problem: str = ""             # why the warm path ended early ("": it did not)


def warm_routes(pool: WorkerPool, disaggregated: bool) -> list[frozenset[str]]:
    """The worker addresses each warm request is pinned to: every healthy prefill -> decode pair,
    or every healthy colocated worker."""
    decode = [w.address for w in pool.decode if w.accepting]
    if not disaggregated:
        return [frozenset({d}) for d in decode]
    prefill = [w.address for w in pool.prefill if w.accepting]
    return [frozenset({p, d}) for p in prefill for d in decode]


def request_shape(pool: WorkerPool, max_model_len: int) -> tuple[int, int]:
    """(prompt tokens, output tokens): short enough that the prompt and its output stay within
    one page, so no page fills, none is cached, and every prefix cache is left as it was."""
    block_size = min((w.block_size for w in pool.all if w.block_size), default=16)
    output = max(1, min(MAX_TOKENS, block_size // 2))
    return max(1, min(block_size - output, max_model_len - output - 1)), output


async def run_warm_path(service: GenerationService, pool: WorkerPool, disaggregated: bool,
                        timeout_s: float) -> WarmPathReport:
    """The warm requests, then the wait for every worker to be settled; never raises for a
    worker's failure or the timeout (the report says what happened)."""
    started = time.monotonic()
    routes = warm_routes(pool, disaggregated)
    firsts: list[float] = []
    problem = ""
    held: list[str] = []            # what the workers still held at the last look
    try:
        async with asyncio.timeout(timeout_s):
            length, max_tokens = request_shape(pool, service.max_model_len)
            # Sampled, with logprobs: the richest form of a token on the wire; EOS ignored.
            params = SamplingParams(temperature=0.7, top_p=0.9, seed=0, logprobs=1,
                                    max_tokens=max_tokens, ignore_eos=True)
            results = await asyncio.gather(
                *(_one_request(service, route, index, length, params)
                  for index, route in enumerate(routes)),
                return_exceptions=True)
            firsts = [r for r in results if isinstance(r, float)]
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                problem = f"{len(failures)} of {len(routes)} requests failed: {failures[0]!r}"
            await _settled(pool, held)
    except TimeoutError:
        problem = problem or (f"not done within {timeout_s:g}s"
                              + (f"; still held: {'; '.join(held)}" if held else ""))
    except Exception as exc:  # noqa: BLE001 - a warm path that fails must not stop the gateway
        problem = problem or repr(exc)
    return WarmPathReport(len(routes), len(firsts), time.monotonic() - started,
                          max(firsts, default=0.0), problem)


async def _one_request(service: GenerationService, route: frozenset[str], index: int,
                       length: int, params: SamplingParams) -> float:
    """One request down `route`, read to its end; returns the seconds to its first token."""
    text = f"{index}: {WARM_TEXT}"
    ids = service.encode_text(text)[:length]
    req = service.prepare(ids, params, tenant="", request_id=f"warm-up-{index}",
                          pinned_to=route)
    first_at = None
    deltas = service.generate(req, "warm-up")
    async with contextlib.aclosing(deltas):
        async for delta in deltas:
            if first_at is None:
                first_at = time.monotonic()
            if delta.finish_reason is not None:
                break
    return (first_at or time.monotonic()) - req.arrival


def unsettled(worker: WorkerHandle, report: worker_pb2.LoadReport) -> str:
    """What a worker still holds after the warm path ("" when nothing)."""
    held = [f"{name} {value}" for name, value in (
        ("running", report.running_requests), ("waiting", report.waiting_requests),
        ("reserved blocks", report.reserved_blocks), ("queued prompt tokens", report.queued_prompt_tokens),
        ("used blocks", report.num_blocks - report.free_blocks),
        ("gateway bookings", len(worker.bookings)),
        ("gateway in-flight prompts", len(worker.inflight_prompt_tokens))) if value]
    if report.integrity_error:
        held.append(f"integrity: {report.integrity_error}")
    return f"{worker.address}: {', '.join(held)}" if held else ""


async def _settled(pool: WorkerPool, held: list[str]) -> None:
    """Returns once every healthy worker reports nothing held and a sound pool (the caller's
    timeout bounds the wait); `held` says what was still held at the last look. A decode worker
    frees a request's blocks just after its last token is sent, so a first look may see them."""
    while True:
        workers = [w for w in pool.all if w.healthy]
        reports = await asyncio.gather(*(w.stub.Load(worker_pb2.LoadRequest(check_integrity=True),
                                                     timeout=_LOAD_TIMEOUT_S) for w in workers))
        held[:] = [u for u in (unsettled(w, r) for w, r in zip(workers, reports)) if u]
        if not held:
            return
        await asyncio.sleep(_POLL_S)
