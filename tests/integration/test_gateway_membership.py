"""Workers join and leave a serving gateway (its Python API and /admin/workers): a worker added
while requests stream takes new ones, a retired worker gets nothing new, its running requests
finish there, and no request is lost."""

import asyncio

import aiohttp
import grpc
import pytest

from services.decode.worker import DecodeWorker
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.worker.config import WorkerConfig
from services.worker.hosting import WorkerThread
from tests.helpers.gateway_cluster import HOST, engine_config, gateway_cluster

pytestmark = pytest.mark.timeout(180)

MAX_TOKENS = 24


async def _generate(stub, i: int, started: asyncio.Event | None = None, max_tokens: int = MAX_TOKENS) -> int:
    n = 0
    async for msg in stub.Generate(gen.GenerateRequest(text=f"request {i}", sampling=gen.SamplingParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True))):
        n += len(msg.token_ids)
        if started is not None:
            started.set()
    return n


async def test_added_worker_takes_requests_and_a_retired_one_loses_none():
    engine = engine_config()
    async with gateway_cluster("disaggregated", engine=engine) as c:
        gateway = c.gateway
        new_decode = WorkerThread(DecodeWorker(WorkerConfig(engine=engine)), "decode-new")
        new_prefill = WorkerThread(PrefillWorker(WorkerConfig(engine=engine)), "prefill-new")
        try:
            for t in (new_decode, new_prefill):
                await asyncio.to_thread(t.start, HOST, 0)
            async with grpc.aio.insecure_channel(gateway.grpc_address) as ch:
                stub = gen_grpc.GenerationStub(ch)
                started = [asyncio.Event() for _ in range(8)]
                first = [asyncio.create_task(_generate(stub, i, e)) for i, e in enumerate(started)]
                await asyncio.gather(*(e.wait() for e in started))   # all on the original pair
                await gateway.add_worker(new_decode.address, "decode")
                await gateway.add_worker(new_prefill.address, "prefill")
                assert [w.address for w in gateway.pool.decode][-1] == new_decode.address
                # Retire the original pair while the first requests are still running on them.
                old_decode, old_prefill = c.decode[0].address, c.prefill[0].address
                retiring = asyncio.gather(gateway.retire_worker(old_decode),
                                          gateway.retire_worker(old_prefill))
                second = [asyncio.create_task(_generate(stub, i)) for i in range(8, 16)]
                retired_decode, _ = await retiring
                assert {w.address for w in gateway.pool.all} == {new_decode.address, new_prefill.address}
                third = await asyncio.gather(*(_generate(stub, i) for i in range(16, 24)))
                results = await asyncio.gather(*first, *second)
            assert results + third == [MAX_TOKENS] * 24
            # The retired pair ran requests and ended with nothing held; the new pair served the rest.
            c.decode.append(new_decode)
            c.prefill.append(new_prefill)
            assert await c.blocks_all_free(), c.free_blocks()
            assert retired_decode.report.kv_bytes_received > 0
            assert gateway.pool.find(new_decode.address).report.kv_bytes_received > 0
            assert gateway.admission.running == 0
            metrics = gateway.render_metrics().decode()
            assert old_decode not in metrics and old_prefill not in metrics
            assert f'worker="{new_decode.address}"' in metrics
        finally:
            for t in (new_decode, new_prefill):
                if t not in c.workers:
                    await asyncio.to_thread(t.stop)


async def test_adding_an_unreachable_worker_times_out_and_leaves_the_pool_as_it_was():
    async with gateway_cluster("disaggregated") as c:
        before = [w.address for w in c.gateway.pool.all]
        with pytest.raises(TimeoutError):
            await c.gateway.pool.add(f"{HOST}:1", "decode", ready_timeout_s=0.3)
        assert [w.address for w in c.gateway.pool.all] == before
        with pytest.raises(ValueError, match="already"):
            await c.gateway.pool.add(before[0], "decode", ready_timeout_s=0.3)


async def test_a_drain_that_outlasts_its_timeout_puts_the_worker_back_in_service():
    async with gateway_cluster("disaggregated") as c:
        gateway, decode = c.gateway, c.decode[0].address
        async with grpc.aio.insecure_channel(gateway.grpc_address) as ch:
            stub = gen_grpc.GenerationStub(ch)
            started = asyncio.Event()
            running = asyncio.create_task(_generate(stub, 0, started, max_tokens=200))
            await started.wait()
            with pytest.raises(TimeoutError, match="still busy"):
                await gateway.retire_worker(decode, timeout_s=0.01)
            assert gateway.pool.find(decode).accepting
            assert await running == 200
            assert await _generate(stub, 1) == MAX_TOKENS
        assert await c.blocks_all_free(), c.free_blocks()


async def test_admin_http_adds_and_retires_workers_with_the_api_key():
    engine = engine_config()
    async with gateway_cluster("disaggregated", engine=engine, api_keys=("secret",)) as c:
        url = c.gateway.http_url + "/admin/workers"
        auth = {"Authorization": "Bearer secret"}
        new_decode = WorkerThread(DecodeWorker(WorkerConfig(engine=engine)), "decode-admin")
        await asyncio.to_thread(new_decode.start, HOST, 0)
        c.decode.append(new_decode)
        old = c.decode[0].address
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json={"address": new_decode.address, "role": "decode"}) as r:
                assert r.status == 401
            async with s.post(url, json={"address": new_decode.address, "role": "both"}, headers=auth) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "role"
            async with s.post(url, json={"address": new_decode.address, "role": "decode"}, headers=auth) as r:
                assert r.status == 200 and (await r.json())["healthy"] is True
            async with s.delete(f"{url}/{old}", headers=auth) as r:
                assert r.status == 200 and (await r.json())["removed"] is True
            async with s.delete(f"{url}/{old}", headers=auth) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "address"
            async with s.get(url, headers=auth) as r:
                listed = (await r.json())["workers"]
            assert sorted(w["role"] for w in listed) == ["decode", "prefill"]
            assert [w["address"] for w in listed if w["role"] == "decode"] == [new_decode.address]
            body = {"prompt": "after the swap", "max_tokens": 5, "ignore_eos": True}
            async with s.post(c.gateway.http_url + "/v1/completions", json=body, headers=auth) as r:
                assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 5
        assert await c.blocks_all_free(), c.free_blocks()
