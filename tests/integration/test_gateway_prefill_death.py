"""Prefill workers that die: killed in the middle of a prefill, or in the middle of shipping its
pages, the request is prefilled again on another prefill worker (the client gets exactly the
tokens of an undisturbed run, and no block stays reserved or held anywhere); a worker that comes
back on its address is routed to again."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from services.kvtransfer import frames
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.worker.config import WorkerConfig
from services.worker.hosting import WorkerThread
from tests.helpers.gateway_cluster import HOST, engine_config, gateway_cluster

pytestmark = pytest.mark.timeout(180)

SAMPLING = gen.SamplingParams(temperature=0.7, seed=5, max_tokens=8, ignore_eos=True)


async def tokens(address: str, text: str) -> list[int]:
    async with grpc.aio.insecure_channel(address) as ch:
        return [t async for m in gen_grpc.GenerationStub(ch).Generate(
            gen.GenerateRequest(text=text, sampling=SAMPLING)) for t in m.token_ids]


def serving_prefill(c) -> WorkerThread | None:
    return next((t for t in c.prefill if t.worker._inflight), None)


async def wait_for(predicate, within_s: float = 30.0):
    deadline = time.monotonic() + within_s
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)
    return found


async def test_prefill_worker_killed_mid_prefill_the_request_is_prefilled_elsewhere():
    text = "a long prompt takes a while to prefill in chunks " * 40      # ~2000 tokens, 8+ chunks
    async with gateway_cluster("disaggregated", num_prefill=2, shutdown_grace_s=0.0,
                               engine=engine_config(num_blocks=512)) as c:
        await tokens(c.gateway.grpc_address, text)          # a first run: every kernel loaded
        request = asyncio.ensure_future(tokens(c.gateway.grpc_address, text + "!"))
        victim = await wait_for(lambda: serving_prefill(c))
        await asyncio.to_thread(victim.stop)
        got = await request
        c.prefill.remove(victim)
        again = await tokens(c.gateway.grpc_address, text + "!")
        assert got == again and len(got) == SAMPLING.max_tokens
        retried = c.gateway.metrics.registry.get_sample_value("tandem_request_retries_total",
                                                               {"stage": "before_first_token"})
        assert retried and retried >= 1
        assert await c.blocks_all_free(), c.free_blocks()


async def test_prefill_worker_killed_mid_transfer_the_request_is_prefilled_elsewhere(monkeypatch):
    text = "pages in flight when the sender dies " * 8
    async with gateway_cluster("disaggregated", num_prefill=2, kv_transport="grpc",
                               shutdown_grace_s=0.0) as c:
        reference = await tokens(c.gateway.grpc_address, text)
        encode_data, in_transfer, release = frames.encode_data, threading.Event(), threading.Event()

        def stall_first(offset, pieces):
            if not in_transfer.is_set():        # the first transfer stalls after its header
                in_transfer.set()
                release.wait(30)
            return encode_data(offset, pieces)
        monkeypatch.setattr(frames, "encode_data", stall_first)
        request = asyncio.ensure_future(tokens(c.gateway.grpc_address, text))
        await asyncio.to_thread(in_transfer.wait, 60)
        victim = serving_prefill(c)
        assert victim is not None
        await asyncio.to_thread(victim.stop)
        release.set()
        got = await request
        assert got == reference
        c.prefill.remove(victim)
        assert await c.blocks_all_free(within_s=5.0), c.free_blocks()


async def test_a_prefill_worker_that_comes_back_is_used_again():
    async with gateway_cluster("disaggregated", num_prefill=2, shutdown_grace_s=0.0) as c:
        pool = c.gateway.pool
        first = c.prefill[0]
        port = int(first.address.rsplit(":", 1)[1])
        handle = next(w for w in pool.prefill if w.address == first.address)
        await asyncio.to_thread(first.stop)
        await wait_for(lambda: not handle.healthy)
        assert await tokens(c.gateway.grpc_address, "served by the other one")

        back = WorkerThread(PrefillWorker(WorkerConfig(engine=engine_config(), shutdown_grace_s=0.0)), "prefill-0b")
        await asyncio.to_thread(back.start, HOST, port)
        c.prefill[0] = back
        await wait_for(lambda: handle.healthy, within_s=60.0)
        # Make the other one look busy: routing now picks the one that came back.
        other = next(w for w in pool.prefill if w is not handle)
        other.inflight_prompt_tokens["busy"] = 10_000
        try:
            assert len(await tokens(c.gateway.grpc_address, "served by the one that came back")) == 8
        finally:
            del other.inflight_prompt_tokens["busy"]
        assert back.worker.prompt_counter.prompt_tokens > 0
        assert await c.blocks_all_free(), c.free_blocks()


async def test_no_prefill_worker_left_is_unavailable_with_retry_after_at_once():
    async with gateway_cluster("disaggregated", num_prefill=1, shutdown_grace_s=0.0) as c:
        await asyncio.to_thread(c.prefill[0].stop)
        handle = c.gateway.pool.prefill[0]
        await wait_for(lambda: not handle.healthy)
        async with grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in gen_grpc.GenerationStub(ch).Generate(
                        gen.GenerateRequest(text="anyone?", sampling=SAMPLING)):
                    pass
            took = time.monotonic() - start
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(info.value.trailing_metadata()).get("retry-after")
        assert took < 10.0, took          # refused from the pool's state, not after a timeout
        c.prefill.clear()
        assert await c.blocks_all_free(), c.free_blocks()
