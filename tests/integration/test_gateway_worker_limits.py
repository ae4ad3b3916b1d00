"""The gateway takes each worker's pool size and max_model_len from its load reports, not from
flags of its own: with small pools (the model allows 4096 tokens), ListModels and /v1/models
show what the workers take, a request beyond it is refused naming max_model_len, and one at the
limit is served."""

import aiohttp
import grpc
import pytest

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import engine_config, gateway_cluster

pytestmark = pytest.mark.timeout(120)

PREFILL_BLOCKS, DECODE_BLOCKS = 64, 16          # blocks of 16 tokens: 1024 and 256 tokens


async def test_the_workers_reports_set_the_gateways_limits():
    async with gateway_cluster("disaggregated", engine=engine_config(num_blocks=PREFILL_BLOCKS),
                               decode_engine=engine_config(num_blocks=DECODE_BLOCKS)) as cluster:
        pool = cluster.gateway.pool
        assert [(w.role, w.num_blocks, w.block_size, w.max_model_len) for w in pool.all] == [
            ("prefill", PREFILL_BLOCKS, 16, 1024), ("decode", DECODE_BLOCKS, 16, 256)]
        async with grpc.aio.insecure_channel(cluster.gateway.grpc_address) as ch:
            stub = gen_grpc.GenerationStub(ch)
            models = await stub.ListModels(gen.ListModelsRequest())
            assert models.models[0].max_model_len == 256
            prompt = gen.TokenIds(ids=list(range(5, 15)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Generate(gen.GenerateRequest(
                        token_ids=prompt, sampling=gen.SamplingParams(max_tokens=247))):
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "exceeds max_model_len (256)" in refused.value.details()
            served = [m async for m in stub.Generate(gen.GenerateRequest(
                token_ids=prompt, sampling=gen.SamplingParams(max_tokens=246, ignore_eos=True)))]
            assert served[-1].usage.completion_tokens == 246
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{cluster.gateway.http_url}/v1/models") as reply:
                assert (await reply.json())["data"][0]["max_model_len"] == 256
        assert await cluster.blocks_all_free(), cluster.free_blocks()
