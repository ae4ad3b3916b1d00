"""The gateway's warm path: before it serves, one real request down every prefill -> decode pair
(or to every colocated worker), too short to fill a page. While those run, gRPC health says NOT_SERVING, /health 503 and
user requests are refused (UNAVAILABLE / 503 with Retry-After); once the gateway serves, every
worker's pool is fully free again with nothing in its prefix cache, every pair has shipped
pages, and the gateway's metrics
count none of it. A warm path that cannot finish ends at its timeout with a warning, and the
gateway serves. The workers and engines are real; one engine holds the warm requests until the
test lets them go."""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import logging
import threading

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.decode.worker import DecodeWorker
from services.engine.engine import LLMEngine
from services.gateway.config import GatewayConfig
from services.gateway.gateway import Gateway
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.worker.config import WorkerConfig
from services.worker.hosting import WorkerThread
from tests.helpers.gateway_cluster import HOST, engine_config, gateway_cluster

pytestmark = pytest.mark.timeout(180)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
HOLD_LIMIT_S = 90.0


class WarmRequestGate(LLMEngine):
    """An LLMEngine that holds each request of the gateway's warm path (ids "warm-up-...") at
    add_request until `release` is set, then adds it as the engine does."""

    def __init__(self, config, release: threading.Event) -> None:
        super().__init__(config)
        self.release = release
        self.reached = threading.Event()
        self.warm_ids: list[str] = []

    def add_request(self, request_id: str, *args, **kwargs) -> None:
        if request_id.startswith("warm-up-"):
            self.warm_ids.append(request_id)
            self.reached.set()
            self.release.wait(HOLD_LIMIT_S)
        super().add_request(request_id, *args, **kwargs)


@contextlib.asynccontextmanager
async def held_prefill_pair(release: threading.Event):
    """A decode worker and a prefill worker whose engine holds warm requests; yields the gate
    engine and a GatewayConfig for the pair."""
    config = engine_config()
    gate = await asyncio.to_thread(WarmRequestGate, config, release)
    threads = [WorkerThread(DecodeWorker(WorkerConfig(engine=config)), "decode-0"),
               WorkerThread(PrefillWorker(WorkerConfig(engine=config), engine=gate), "prefill-0")]
    try:
        for t in threads:
            await asyncio.to_thread(t.start, HOST, 0)
        yield gate, threads, GatewayConfig(
            decode_workers=(threads[0].address,), prefill_workers=(threads[1].address,),
            host=HOST, grpc_port=0, http_port=0, worker_ready_timeout_s=30.0)
    finally:
        release.set()
        for t in threads:
            await asyncio.to_thread(t.stop)


def _all_free(threads: list[WorkerThread]) -> bool:
    for t in threads:
        kv = t.worker.engine.kv
        if t.run(t.worker.loop.call(lambda kv=kv: kv.num_free_blocks != kv.num_blocks), 10):
            return False
    return True


async def test_the_gateway_serves_only_after_its_warm_path():
    release = threading.Event()
    async with held_prefill_pair(release) as (gate, threads, config):
        gateway = Gateway(config)
        starting = asyncio.create_task(gateway.start())
        try:
            assert await asyncio.to_thread(gate.reached.wait, 60)
            # Listening, but not ready: its warm request sits in the prefill engine.
            assert not starting.done() and gateway.http_port and gateway.grpc_port
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gateway.http_url}/health") as reply:
                    assert reply.status == 503
                async with http.post(f"{gateway.http_url}/v1/completions",
                                     json={"model": "tiny-random", "prompt": "hi", "max_tokens": 2}) as reply:
                    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
                    assert "warming up" in (await reply.json())["error"]["message"]
            async with grpc.aio.insecure_channel(gateway.grpc_address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for name in ("", "tandem.v1.Generation"):
                    assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == NOT_SERVING
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in gen_grpc.GenerationStub(channel).Generate(gen.GenerateRequest(
                            text="hi", sampling=gen.SamplingParams(max_tokens=2))):
                        pass
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert not starting.done()

                release.set()
                await asyncio.wait_for(starting, 60)
                for name in ("", "tandem.v1.Generation"):
                    assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == SERVING
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gateway.http_url}/health") as reply:
                    assert reply.status == 200
            assert len(gate.warm_ids) == 1 and gate.warm_ids[0].startswith("warm-up-0-")
            # Ready means settled: nothing of the warm request is left on either worker.
            assert await asyncio.to_thread(_all_free, threads)
        finally:
            release.set()
            await asyncio.gather(starting, return_exceptions=True)
            await gateway.stop()


async def test_a_warm_path_that_cannot_finish_ends_at_its_timeout_and_the_gateway_serves(caplog):
    release = threading.Event()
    async with held_prefill_pair(release) as (gate, threads, config):
        config = dataclasses.replace(config, warm_path_timeout_s=1.0)
        with caplog.at_level(logging.WARNING, logger="services.gateway.gateway"):
            async with Gateway(config) as gateway:
                warnings = [r.getMessage() for r in caplog.records if "warm path" in r.getMessage()]
                assert len(warnings) == 1 and "not done within 1s" in warnings[0], warnings
                assert gate.reached.is_set() and not release.is_set()
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{gateway.http_url}/health") as reply:
                        assert reply.status == 200
                # Let the held request go: it was cancelled, and frees what it took.
                release.set()
                deadline = asyncio.get_running_loop().time() + 20
                while not await asyncio.to_thread(_all_free, threads):
                    if asyncio.get_running_loop().time() > deadline:
                        held = [(t.worker.worker_id, t.run(t.worker.loop.call(lambda e=t.worker.engine: (
                            e.kv.num_free_blocks, list(e._requests), list(e._reserved))), 5)) for t in threads]
                        raise AssertionError(f"warm request leaked blocks: {held}")
                    await asyncio.sleep(0.05)
                for t in threads:
                    t.run(t.worker.loop.call(t.worker.engine.kv.check_integrity), 10)


@pytest.mark.parametrize("mode", ["disaggregated", "colocated"])
async def test_after_the_warm_path_every_pool_is_free_and_every_route_was_used(mode):
    async with gateway_cluster(mode, num_prefill=2, num_decode=2) as cluster:
        # No grace: the gateway only serves once every worker reported nothing held.
        assert await cluster.blocks_all_free(within_s=0.0), cluster.free_blocks()
        assert not any(w.bookings or w.inflight_prompt_tokens for w in cluster.gateway.pool.all)
        for t in cluster.workers:             # and no prefix cache holds a page of it
            assert t.run(t.worker.loop.call(t.worker.engine.kv.cached_block_hashes), 10) == []
        for t in cluster.prefill if mode == "disaggregated" else cluster.decode:
            assert t.worker.prompt_counter.prompt_tokens > 0, t.worker.worker_id
        if mode == "disaggregated":
            kv_addresses = {t.worker.kv_address for t in cluster.decode}
            for t in cluster.prefill:         # every prefill worker shipped pages to every decode one
                assert t.worker.transports.destinations == kv_addresses
            for t in cluster.decode:
                assert t.worker.receiver.bytes_received > 0


def _samples(gateway: Gateway) -> dict[str, float]:
    """Every sample of the gateway's /metrics, summed over labels, by sample name."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(gateway.render_metrics().decode()):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def test_the_gateway_metrics_count_users_only():
    async with gateway_cluster("disaggregated") as cluster:
        before = _samples(cluster.gateway)
        for name in ("tandem_requests_total", "tandem_time_to_first_token_seconds_count",
                     "tandem_e2e_request_latency_seconds_count", "tandem_admissions_total",
                     "tandem_prompt_tokens_total", "tandem_generation_tokens_total",
                     "tandem_kv_transfer_bytes_count", "tandem_inter_token_latency_seconds_count",
                     "tandem_request_failures_total", "tandem_rejections_total"):
            assert before.get(name, 0.0) == 0.0, (name, before.get(name))
        assert before["tandem_running_requests"] == 0.0
        prompt = list(range(1, 41))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{cluster.gateway.http_url}/v1/completions",
                                 json={"model": "tiny-random", "prompt": prompt, "max_tokens": 5,
                                       "ignore_eos": True}) as reply:
                assert reply.status == 200
                assert (await reply.json())["usage"]["completion_tokens"] == 5
        after = _samples(cluster.gateway)
        assert after["tandem_requests_total"] == 1.0
        assert after["tandem_time_to_first_token_seconds_count"] == 1.0
        assert after["tandem_admissions_total"] == 1.0
        assert after["tandem_prompt_tokens_total"] == len(prompt)
        assert after["tandem_generation_tokens_total"] == 5.0
        assert after["tandem_kv_transfer_bytes_count"] == 1.0
        assert await cluster.blocks_all_free(), cluster.free_blocks()
