"""Ready means ready: while a worker's engine warms up, its server is listening but answers health
checks NOT_SERVING and refuses every other call (UNAVAILABLE), a gateway's load poll finds it not
healthy, a gateway in front of it has not opened /health, and `start()` has not returned (so no
launcher reports it up); once the warm-up ends it serves. The engines are real; only their
warm-up waits for the test to release it."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.decode.worker import DecodeWorker
from services.engine.engine import LLMEngine
from services.gateway.config import GatewayConfig
from services.gateway.gateway import Gateway
from services.gateway.workers import WorkerPool
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from services.worker.config import WorkerConfig
from services.worker.readiness import WARMING_UP
from tests.helpers.workers import engine_config

pytestmark = pytest.mark.timeout(120)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class GatedWarmUpEngine(LLMEngine):
    """An LLMEngine whose warm-up first waits for `release` (then warms up as the engine does)."""

    def __init__(self, config, release: threading.Event) -> None:
        super().__init__(config)
        self.release = release
        self.warm_ups = 0

    def warm_up(self):
        self.release.wait()
        self.warm_ups += 1
        return super().warm_up()


async def _listening(worker) -> str:
    while worker.address is None:
        await asyncio.sleep(0.01)
    return worker.address


@pytest.mark.parametrize("role", ["decode", "prefill"])
async def test_a_worker_serves_only_after_its_warm_up(role: str) -> None:
    release = threading.Event()
    config = engine_config(num_blocks=8)        # 8 blocks of 16: a pool of 128 tokens
    engine = await asyncio.to_thread(GatedWarmUpEngine, config, release)
    kind, stub_type = ((DecodeWorker, worker_pb2_grpc.DecodeWorkerStub) if role == "decode"
                       else (PrefillWorker, worker_pb2_grpc.PrefillWorkerStub))
    worker = kind(WorkerConfig(engine=config, colocated=role == "decode"), engine=engine)
    starting = asyncio.create_task(worker.start("127.0.0.1"))
    pool = gateway = None
    try:
        address = await asyncio.wait_for(_listening(worker), 60)
        channel = grpc.aio.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        stub = stub_type(channel)
        service = f"tandem.v1.{kind.__name__}"
        for name in ("", service):
            assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Load(worker_pb2.LoadRequest())
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == WARMING_UP
        if role == "decode":                    # a server-streaming call is refused the same way
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Decode(worker_pb2.DecodeRequest(request_id="r", prefill_here=True,
                                                                    prompt_token_ids=[1, 2])):
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # A gateway's view: polled, not healthy, no report to route by; a gateway in front of it
        # (colocated) does not open its ports, so its /health cannot say ready.
        prefill, decode = ((), (address,)) if role == "decode" else ((address,), ())
        pool = WorkerPool(prefill, decode, poll_interval_s=0.05, rpc_timeout_s=5.0)
        await pool.poll_once()
        assert [(w.healthy, w.report) for w in pool.all] == [(False, None)]
        if role == "decode":
            gateway = Gateway(GatewayConfig(mode="colocated", decode_workers=(address,), grpc_port=0,
                                            http_port=0, worker_ready_timeout_s=60))
            gateway_up = asyncio.create_task(gateway.start())
            await pool.poll_once()              # a poll later, the gateway still waits
            assert not gateway_up.done() and gateway.http_port == 0
        assert not starting.done() and engine.warm_ups == 0

        release.set()
        assert await asyncio.wait_for(starting, 60) == address
        if gateway is not None:
            await asyncio.wait_for(gateway_up, 60)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{gateway.http_url}/health") as reply:
                    assert reply.status == 200
        assert engine.warm_ups == 1
        for name in ("", service):
            assert (await health.Check(health_pb2.HealthCheckRequest(service=name))).status == SERVING
        await pool.poll_once()
        (handle,) = pool.all
        assert handle.healthy
        # The report carries the real pool and the longest request it takes.
        assert (handle.report.num_blocks, handle.report.block_size) == (8, 16)
        assert handle.report.max_model_len == engine.max_model_len == 128
        await channel.close()
    finally:
        release.set()
        if pool is not None:
            await pool.stop()
        if gateway is not None:
            await gateway.stop()
        await asyncio.gather(starting, return_exceptions=True)
        await worker.stop()
