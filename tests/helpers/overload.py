"""Overload drivers for the HTTP API. `closed_loop`: `clients` concurrent clients, each sending the
next /v1/completions request as soon as the last one is answered (a refused client retries at
once, ignoring Retry-After: the worst case), for `duration_s`. `open_loop`: requests sent at a
fixed rate whatever the answers, each on its own (arrivals do not wait for the server, so a
refusal's latency is the server's, not the clients' own queue). Both record every outcome: each
completion's token count, each refusal's latency from send to answer and its Retry-After.
Used by tests/integration/test_gateway_overload.py and benchmarks/overload_soak.py."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from dataclasses import dataclass, field

import aiohttp


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class OverloadRun:
    duration_s: float = 0.0
    completed: int = 0
    wrong_length: int = 0                       # completions with fewer tokens than asked (ignore_eos)
    refused_latency_s: list[float] = field(default_factory=list)
    completed_latency_s: list[float] = field(default_factory=list)
    missing_retry_after: int = 0
    other: collections.Counter = field(default_factory=collections.Counter)   # status -> count

    @property
    def refused(self) -> int:
        return len(self.refused_latency_s)

    def summary(self) -> dict:
        def pct(xs: list[float], q: float) -> float | None:
            return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else None
        return {"duration_s": round(self.duration_s, 2), "completed": self.completed,
                "refused": self.refused, "wrong_length": self.wrong_length,
                "missing_retry_after": self.missing_retry_after, "other": dict(self.other),
                "refusal_p50_ms": _ms(pct(self.refused_latency_s, 0.5)),
                "refusal_p99_ms": _ms(pct(self.refused_latency_s, 0.99)),
                "refusal_max_ms": _ms(max(self.refused_latency_s, default=None)),
                "completed_p50_s": _s(pct(self.completed_latency_s, 0.5)),
                "completed_p99_s": _s(pct(self.completed_latency_s, 0.99))}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def _s(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


async def _send(session: aiohttp.ClientSession, url: str, run: OverloadRun, body: dict,
                max_tokens: int) -> bool:
    """One request; True when it was refused."""
    start = time.monotonic()
    async with session.post(url + "/v1/completions", json=body) as resp:
        data = await resp.read()
        took = time.monotonic() - start
        if resp.status == 200:
            run.completed += 1
            run.completed_latency_s.append(took)
            if json.loads(data)["usage"]["completion_tokens"] != max_tokens:
                run.wrong_length += 1
        elif resp.status == 429:
            run.refused_latency_s.append(took)
            run.missing_retry_after += "Retry-After" not in resp.headers
            return True
        else:
            run.other[resp.status] += 1
    return False


def _body(i: int, n: int, max_tokens: int) -> dict:
    return {"prompt": f"client {i} request {n}", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.8, "seed": i}


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def open_loop(url: str, rate_per_s: float, duration_s: float, max_tokens: int) -> OverloadRun:
    run = OverloadRun()
    began = time.monotonic()
    tasks = []
    async with _session() as s:
        n = 0
        while (due := began + n / rate_per_s) < began + duration_s:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.ensure_future(_send(s, url, run, _body(n, n, max_tokens), max_tokens)))
            n += 1
        await asyncio.gather(*tasks)
    run.duration_s = time.monotonic() - began
    return run


async def closed_loop(url: str, clients: int, duration_s: float, max_tokens: int) -> OverloadRun:
    run = OverloadRun()
    stop_at = time.monotonic() + duration_s

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            if await _send(session, url, run, _body(i, n, max_tokens), max_tokens):
                await asyncio.sleep(0)      # let the others in; no back-off otherwise

    began = time.monotonic()
    async with _session() as s:
        await asyncio.gather(*(client(s, i) for i in range(clients)))
    run.duration_s = time.monotonic() - began
    return run


async def grpc_closed_loop(address: str, clients: int, duration_s: float, max_tokens: int) -> OverloadRun:
    """closed_loop over tandem.v1.Generation/Generate: RESOURCE_EXHAUSTED counts as a refusal
    (Retry-After: the `retry-after` trailer), any other status under `other` by its name."""
    import grpc

    from services.rpc.tandem.v1 import generation_pb2 as gen
    from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc

    run = OverloadRun()
    stop_at = time.monotonic() + duration_s

    async def client(stub, i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            request = gen.GenerateRequest(text=f"client {i} request {n}", sampling=gen.SamplingParams(
                max_tokens=max_tokens, ignore_eos=True, temperature=0.8, seed=i))
            start = time.monotonic()
            call = stub.Generate(request, timeout=120)
            try:
                count = sum([len(m.token_ids) async for m in call])
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    run.refused_latency_s.append(time.monotonic() - start)
                    run.missing_retry_after += "retry-after" not in dict(exc.trailing_metadata() or ())
                    await asyncio.sleep(0)
                else:
                    run.other[exc.code().name] += 1
                continue
            run.completed += 1
            run.completed_latency_s.append(time.monotonic() - start)
            run.wrong_length += count != max_tokens

    began = time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gen_grpc.GenerationStub(channel)
        await asyncio.gather(*(client(stub, i) for i in range(clients)))
    run.duration_s = time.monotonic() - began
    return run
