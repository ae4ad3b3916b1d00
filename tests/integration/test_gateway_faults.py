"""Deadlines, authentication over HTTP, a prefill worker that dies (the request moves to another
one), and prefix-cache affinity across prefill workers; the faults that involve the gateway's
calls to its workers also with those calls in-process (services/worker/local_calls.py)."""

import asyncio

import aiohttp
import grpc
import pytest

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)


async def generate(address, request):
    async with grpc.aio.insecure_channel(address) as ch:
        return [m async for m in gen_grpc.GenerationStub(ch).Generate(request)]


@pytest.mark.parametrize("local_calls", [False, True], ids=["grpc", "local"])
async def test_request_past_its_deadline_is_cancelled_everywhere(local_calls):
    async with gateway_cluster("disaggregated", request_timeout_s=0.5,
                               local_calls=local_calls) as c:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await generate(c.gateway.grpc_address, gen.GenerateRequest(
                text="slow", sampling=gen.SamplingParams(max_tokens=4000, ignore_eos=True)))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await c.blocks_all_free(within_s=1.0), c.free_blocks()


async def test_http_api_keys():
    async with gateway_cluster("colocated", api_keys=("sk-1",)) as c:
        url = c.gateway.http_url + "/v1/completions"
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer nope"}):
                async with s.post(url, json={"prompt": "x", "max_tokens": 2}, headers=headers) as r:
                    assert r.status == 401
                    assert (await r.json())["error"]["type"] == "authentication_error"
            async with s.post(url, json={"prompt": "x", "max_tokens": 2},
                              headers={"Authorization": "Bearer sk-1"}) as r:
                assert r.status == 200
            async with s.get(c.gateway.http_url + "/v1/models") as r:
                assert r.status == 401


async def test_dead_prefill_worker_is_routed_around():
    async with gateway_cluster("disaggregated", num_prefill=2) as c:
        await asyncio.to_thread(c.prefill[0].stop)       # the one routing would pick first
        for i in range(3):
            msgs = await generate(c.gateway.grpc_address, gen.GenerateRequest(
                text=f"still served {i}", sampling=gen.SamplingParams(max_tokens=4, ignore_eos=True)))
            assert msgs[-1].usage.completion_tokens == 4
        c.prefill.pop(0)
        assert await c.blocks_all_free(), c.free_blocks()


async def test_prompt_sharing_a_prefix_goes_to_the_prefill_worker_that_caches_it():
    async with gateway_cluster("disaggregated", num_prefill=2) as c:
        pool = c.gateway.pool
        prefix = "in the beginning there was the token, and the token was in the stream " * 2
        # Make the first worker look busy so the prefix lands on the second one.
        pool.prefill[0].inflight_prompt_tokens["busy"] = 10_000
        await generate(c.gateway.grpc_address, gen.GenerateRequest(
            text=prefix + "one", sampling=gen.SamplingParams(max_tokens=2)))
        del pool.prefill[0].inflight_prompt_tokens["busy"]
        await asyncio.sleep(0.2)                          # a load report carries the cached hashes
        assert pool.prefill[1].cached_block_hashes and not pool.prefill[0].cached_block_hashes
        msgs = await generate(c.gateway.grpc_address, gen.GenerateRequest(
            text=prefix + "two", sampling=gen.SamplingParams(max_tokens=2)))
        assert msgs[-1].usage.cached_prompt_tokens >= 16
        assert not pool.prefill[0].cached_block_hashes    # the idle first worker was not used
        assert await c.blocks_all_free(), c.free_blocks()


@pytest.mark.parametrize("local_calls", [False, True], ids=["grpc", "local"])
async def test_decode_worker_dying_mid_stream_hands_the_request_to_another_one(local_calls):
    sampling = gen.SamplingParams(temperature=0.9, top_k=40, seed=99, max_tokens=300, ignore_eos=True)
    request = gen.GenerateRequest(text="carry on where the other left off", sampling=sampling)
    async with gateway_cluster("disaggregated", num_decode=2, shutdown_grace_s=0.0,
                               local_calls=local_calls) as c:
        reference = [t for m in await generate(c.gateway.grpc_address, request) for t in m.token_ids]
        async with grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            call = gen_grpc.GenerationStub(ch).Generate(request)
            tokens = []
            async for msg in call:
                tokens += msg.token_ids
                if len(tokens) >= 20:
                    break
            serving = next(t for t in c.decode if t.worker.engine.scheduler.running)
            await asyncio.to_thread(serving.stop)
            async for msg in call:
                tokens += msg.token_ids
            assert msg.finish_reason == gen.FINISH_REASON_LENGTH and msg.usage.completion_tokens == 300
        assert tokens == reference
        retried = c.gateway.metrics.registry.get_sample_value("tandem_request_retries_total",
                                                               {"stage": "mid_stream"})
        assert retried == 1
        c.decode.remove(serving)
        assert await c.blocks_all_free(), c.free_blocks()


@pytest.mark.parametrize("local_calls", [False, True], ids=["grpc", "local"])
async def test_stopping_the_gateway_ends_open_streams_and_frees_their_blocks(local_calls):
    import time
    async with gateway_cluster("disaggregated", local_calls=local_calls) as c:
        async with aiohttp.ClientSession() as s, grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            resp = await s.post(c.gateway.http_url + "/v1/completions",
                                json={"prompt": "go", "max_tokens": 1500, "ignore_eos": True, "stream": True})
            await resp.content.readline()
            call = gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                text="x", sampling=gen.SamplingParams(max_tokens=1500, ignore_eos=True)))
            async for _ in call:
                break
            start = time.monotonic()
            await c.gateway.stop()
            assert time.monotonic() - start < 3.0
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in call:
                    pass
            resp.close()
        assert await c.blocks_all_free(), c.free_blocks()


async def test_gateway_starts_without_an_absent_worker_and_routes_around_it():
    import socket
    from services.gateway.config import GatewayConfig
    from services.gateway.gateway import Gateway
    with socket.socket() as sock:                       # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        absent = f"127.0.0.1:{sock.getsockname()[1]}"
    async with gateway_cluster("colocated") as c:
        config = GatewayConfig(mode="colocated", decode_workers=(absent, c.decode[0].address),
                               grpc_port=0, http_port=0, worker_ready_timeout_s=0.5)
        async with Gateway(config) as gateway:
            msgs = await generate(gateway.grpc_address, gen.GenerateRequest(
                text="one is enough", sampling=gen.SamplingParams(max_tokens=3)))
            assert msgs[-1].usage.completion_tokens == 3
        with pytest.raises(TimeoutError):
            await Gateway(GatewayConfig(mode="colocated", decode_workers=(absent,), grpc_port=0,
                                        http_port=0, worker_ready_timeout_s=0.3)).start()


async def test_two_gateways_sharing_a_decode_worker_requeue_on_a_stale_view():
    from services.gateway.config import GatewayConfig
    from services.gateway.gateway import Gateway
    from tests.helpers.gateway_cluster import engine_config
    # 20 blocks x 16 tokens on the decode side; gateway B reads load reports only when told to, so
    # its view of the pool stays "all free" while gateway A fills it.
    async with gateway_cluster("disaggregated", decode_engine=engine_config(num_blocks=20)) as c:
        config_b = GatewayConfig(decode_workers=(c.decode[0].address,), prefill_workers=(c.prefill[0].address,),
                                 grpc_port=0, http_port=0, load_poll_interval_s=30.0)
        async with Gateway(config_b) as gateway_b, grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            call = gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                text="fill it", sampling=gen.SamplingParams(max_tokens=250, ignore_eos=True)))
            async for _ in call:
                break                                        # A's request holds 17 of the 20 blocks
            second = asyncio.create_task(generate(gateway_b.grpc_address, gen.GenerateRequest(
                text="later", sampling=gen.SamplingParams(max_tokens=100, ignore_eos=True))))
            await asyncio.sleep(0.3)
            assert not second.done() and gateway_b.admission.queued == 1   # refused, then requeued
            async for _ in call:
                pass
            assert await c.blocks_all_free()
            gateway_b.pool.request_poll()                    # B's next load report shows the room
            msgs = await asyncio.wait_for(second, 10)
            assert msgs[-1].usage.completion_tokens == 100
            assert gateway_b.metrics.registry.get_sample_value(
                "tandem_admissions_total", {"path": "requeued"}) == 1
        assert await c.blocks_all_free(), c.free_blocks()


async def test_a_colocated_worker_without_room_refuses_the_join_and_the_request_requeues():
    from services.gateway.config import GatewayConfig
    from services.gateway.gateway import Gateway
    from tests.helpers.gateway_cluster import engine_config
    from tests.helpers.workers import wait_for
    # 64 blocks x 16 tokens. A's 600-token prompt holds 38 of them while it generates; B needs
    # 32 (500 + 10 tokens). Gateway B reads load reports only when told to, so it sends B; the
    # worker checks the room as B joins (no Reserve call first), refuses, and B waits in B's queue.
    async with gateway_cluster("colocated", engine=engine_config(num_blocks=64)) as c:
        config_b = GatewayConfig(mode="colocated", decode_workers=(c.decode[0].address,),
                                 grpc_port=0, http_port=0, load_poll_interval_s=30.0)
        async with Gateway(config_b) as gateway_b, grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            call = gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                token_ids=gen.TokenIds(ids=[1 + i % 300 for i in range(600)]),
                sampling=gen.SamplingParams(max_tokens=400, ignore_eos=True)))
            async for _ in call:
                break
            second = asyncio.create_task(generate(gateway_b.grpc_address, gen.GenerateRequest(
                token_ids=gen.TokenIds(ids=[2 + i % 200 for i in range(500)]),
                sampling=gen.SamplingParams(max_tokens=10, ignore_eos=True))))

            async def queued() -> bool:
                return gateway_b.admission.queued == 1
            await wait_for(queued, 10)                       # refused by the worker, requeued
            assert not second.done()
            call.cancel()                                    # A ends: its blocks come back
            assert await c.blocks_all_free(within_s=10), c.free_blocks()
            gateway_b.pool.request_poll()                    # B's next load report shows the room
            msgs = await asyncio.wait_for(second, 30)
            assert msgs[-1].usage.completion_tokens == 10
            assert gateway_b.metrics.registry.get_sample_value(
                "tandem_admissions_total", {"path": "requeued"}) == 1
            assert c.decode[0].worker.telemetry.metrics.registry.get_sample_value(
                "tandem_worker_rejections_total", {"reason": "kv_blocks"}) == 1
        assert await c.blocks_all_free(), c.free_blocks()
