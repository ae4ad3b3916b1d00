"""The public gRPC API from the generated stubs: Generate, ListModels, reflection, health, and
errors as statuses naming the field (with the workers still serving afterwards)."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster():
    async with gateway_cluster("disaggregated", api_keys=("key-a", "key-b")) as c:
        yield c
        assert await c.blocks_all_free(), c.free_blocks()


AUTH = (("authorization", "Bearer key-a"),)


async def generate(channel, request, metadata=AUTH):
    return [m async for m in gen_grpc.GenerationStub(channel).Generate(request, metadata=metadata)]


async def test_generate_streams_tokens_then_finish_and_usage(cluster):
    async with grpc.aio.insecure_channel(cluster.gateway.grpc_address) as ch:
        msgs = await generate(ch, gen.GenerateRequest(request_id="mine", text="hello world",
                                                      sampling=gen.SamplingParams(temperature=0, max_tokens=6,
                                                                                  logprobs=2)))
        assert len(msgs) >= 2 and all(m.finish_reason == 0 for m in msgs[:-1])
        last = msgs[-1]
        assert last.finish_reason == gen.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == 6 == sum(len(m.token_ids) for m in msgs)
        assert all(len(m.logprobs) == len(m.token_ids) for m in msgs)
        assert msgs[0].request_id.startswith("mine-")
        ids = await generate(ch, gen.GenerateRequest(token_ids=gen.TokenIds(ids=[5, 6, 7]),
                                                     sampling=gen.SamplingParams(max_tokens=3)))
        assert ids[-1].usage.prompt_tokens == 3
        models = await gen_grpc.GenerationStub(ch).ListModels(gen.ListModelsRequest())
        assert models.models[0].id == "tiny-random" and models.models[0].max_model_len > 0


async def test_reflection_lists_services_and_health_is_serving(cluster):
    async with grpc.aio.insecure_channel(cluster.gateway.grpc_address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name async for r in call for s in r.list_services_response.service}
        assert {"tandem.v1.Generation", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "tandem.v1.Generation"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("request_,field", [
    (gen.GenerateRequest(text=""), "text"),
    (gen.GenerateRequest(), "prompt"),
    (gen.GenerateRequest(token_ids=gen.TokenIds()), "token_ids"),
    (gen.GenerateRequest(token_ids=gen.TokenIds(ids=[999_999])), "token_ids"),
    (gen.GenerateRequest(text="x", sampling=gen.SamplingParams(top_p=1.5)), "top_p"),
    (gen.GenerateRequest(text="x", sampling=gen.SamplingParams(temperature=-1)), "temperature"),
    (gen.GenerateRequest(text="x", sampling=gen.SamplingParams(max_tokens=0)), "max_tokens"),
    (gen.GenerateRequest(text="x", sampling=gen.SamplingParams(max_tokens=10_000_000)), "max_tokens"),
    (gen.GenerateRequest(text="x" * 5000), "text"),
    (gen.GenerateRequest(text="x", sampling=gen.SamplingParams(logprobs=1000)), "logprobs"),
])
async def test_bad_requests_are_invalid_argument_naming_the_field(cluster, request_, field):
    async with grpc.aio.insecure_channel(cluster.gateway.grpc_address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await generate(ch, request_)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field), info.value.details()
        assert "Traceback" not in info.value.details()
        # The workers still serve.
        ok = await generate(ch, gen.GenerateRequest(text="still alive", sampling=gen.SamplingParams(max_tokens=2)))
        assert ok[-1].usage.completion_tokens == 2


async def test_unknown_model_and_authentication(cluster):
    async with grpc.aio.insecure_channel(cluster.gateway.grpc_address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await generate(ch, gen.GenerateRequest(model="gpt-9", text="x"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "gpt-9" in info.value.details()
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await generate(ch, gen.GenerateRequest(text="x"), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await generate(ch, gen.GenerateRequest(text="x", sampling=gen.SamplingParams(max_tokens=1)),
                            metadata=(("x-api-key", "key-b"),))
        assert ok[-1].usage.completion_tokens == 1
