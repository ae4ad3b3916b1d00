"""The gateway in front of workers in their own processes (process launcher): the same tokens as
colocated serving, the prompts' KV crossing the gRPC transport, the decode worker never running
a prefill, and every block free on both workers at the end, their pools' integrity checks passing
(from their load reports)."""

import asyncio
import time

import grpc
import pytest

from orchestration.cluster import Cluster, ClusterConfig
from services.gateway.config import GatewayConfig
from services.gateway.gateway import Gateway
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from tests.helpers.gateway_cluster import engine_config, gateway_cluster

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["the quick brown fox jumps", "serving language models " * 5, "你好世界 café"]
SAMPLINGS = [gen.SamplingParams(temperature=0, max_tokens=10),
             gen.SamplingParams(temperature=1.0, top_k=50, seed=77, max_tokens=10)]


async def run_prompts(address: str) -> list[list[int]]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = gen_grpc.GenerationStub(ch)

        async def one(prompt, sampling):
            return [t async for m in stub.Generate(gen.GenerateRequest(text=prompt, sampling=sampling))
                    for t in m.token_ids]
        return await asyncio.gather(*(one(p, s) for p in PROMPTS for s in SAMPLINGS))


async def load_report(address: str, stub_type) -> worker_pb2.LoadReport:
    async with grpc.aio.insecure_channel(address) as ch:
        return await stub_type(ch).Load(worker_pb2.LoadRequest(check_integrity=True))


async def test_separate_processes_match_colocated_and_free_everything():
    engine = engine_config()
    async with gateway_cluster("colocated", engine=engine) as reference_cluster:
        reference = await run_prompts(reference_cluster.gateway.grpc_address)
    cluster = Cluster(ClusterConfig(mode="disaggregated", launcher="process", engine=engine,
                                    kv_transport="grpc", start_timeout_s=120))
    handle = await asyncio.to_thread(cluster.start)
    try:
        async with Gateway(GatewayConfig(grpc_port=0, http_port=0, **handle.gateway_fields())) as gateway:
            got = await run_prompts(gateway.grpc_address)
        assert got == reference
        decode = await load_report(handle.decode_addresses[0], worker_pb2_grpc.DecodeWorkerStub)
        prefill = await load_report(handle.prefill_addresses[0], worker_pb2_grpc.PrefillWorkerStub)
        assert decode.kv_bytes_received > 0 and prefill.kv_bytes_sent == decode.kv_bytes_received
        assert decode.prompt_tokens_computed == 0 and prefill.prompt_tokens_computed > 0
        deadline = time.monotonic() + 2
        while (decode.free_blocks, prefill.free_blocks) != (decode.num_blocks, prefill.num_blocks):
            assert time.monotonic() < deadline, (decode, prefill)
            await asyncio.sleep(0.05)
            decode = await load_report(handle.decode_addresses[0], worker_pb2_grpc.DecodeWorkerStub)
            prefill = await load_report(handle.prefill_addresses[0], worker_pb2_grpc.PrefillWorkerStub)
        assert decode.reserved_blocks == 0
        assert decode.integrity_error == "" and prefill.integrity_error == ""
    finally:
        await asyncio.to_thread(cluster.stop)
