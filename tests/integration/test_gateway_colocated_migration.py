"""A colocated worker that dies mid-stream: each of its streams moves to another colocated worker,
which computes the prompt and the tokens already sent again and continues after them. Greedy and
seeded streams equal the unbroken run (no token lost, none repeated); streams on the surviving
worker are untouched; nothing leaks. With no worker left, the client gets UNAVAILABLE with a
retry-after at once, never a hang. Both with the gateway's calls to its workers over gRPC and
in-process (services/worker/local_calls.py)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(180)

MAX_TOKENS = 120


def requests() -> list[gen.GenerateRequest]:
    out = []
    for i in range(6):
        sampling = (gen.SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True) if i % 2 else
                    gen.SamplingParams(temperature=0.9, top_k=40, seed=100 + i, max_tokens=MAX_TOKENS,
                                       ignore_eos=True))
        out.append(gen.GenerateRequest(text=f"stream {i} carries on elsewhere", sampling=sampling))
    return out


async def tokens_of(stub, request) -> list[int]:
    return [t async for m in stub.Generate(request) for t in m.token_ids]


@pytest.mark.parametrize("local_calls", [False, True], ids=["grpc", "local"])
async def test_streams_of_a_dead_colocated_worker_resume_on_another_with_the_same_tokens(
        local_calls):
    async with gateway_cluster("colocated", num_decode=2, shutdown_grace_s=0.0,
                               local_calls=local_calls) as c:
        async with grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            stub = gen_grpc.GenerationStub(ch)
            reference = [await tokens_of(stub, r) for r in requests()]

            calls = [stub.Generate(r) for r in requests()]
            got: list[list[int]] = [[] for _ in calls]
            reasons: list[int] = [0] * len(calls)
            started = asyncio.Event()

            async def follow(i: int) -> None:
                async for msg in calls[i]:
                    got[i] += msg.token_ids
                    reasons[i] = msg.finish_reason
                    if all(len(g) >= 10 for g in got):
                        started.set()

            followers = [asyncio.ensure_future(follow(i)) for i in range(len(calls))]
            await asyncio.wait_for(started.wait(), 60)
            victim = max(c.decode, key=lambda t: len(t.worker.engine.scheduler.running))
            assert victim.worker.engine.scheduler.running
            await asyncio.to_thread(victim.stop)
            await asyncio.gather(*followers)

        assert got == reference
        assert reasons == [gen.FINISH_REASON_LENGTH] * len(calls)
        moved = c.gateway.metrics.registry.get_sample_value("tandem_request_retries_total",
                                                             {"stage": "mid_stream"})
        assert moved and moved >= 1
        c.decode.remove(victim)
        assert await c.blocks_all_free(), c.free_blocks()


@pytest.mark.parametrize("local_calls", [False, True], ids=["grpc", "local"])
async def test_no_colocated_worker_left_is_unavailable_with_retry_after_at_once(local_calls):
    async with gateway_cluster("colocated", num_decode=1, shutdown_grace_s=0.0,
                               local_calls=local_calls) as c:
        async with grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            stub = gen_grpc.GenerationStub(ch)
            call = stub.Generate(gen.GenerateRequest(text="the last one", sampling=gen.SamplingParams(
                max_tokens=2000, ignore_eos=True)))
            async for _ in call:
                break
            await asyncio.to_thread(c.decode[0].stop)
            with pytest.raises(grpc.aio.AioRpcError) as mid:
                async for _ in call:
                    pass
            assert mid.value.code() == grpc.StatusCode.UNAVAILABLE
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as new:
                await tokens_of(stub, gen.GenerateRequest(text="anyone?", sampling=gen.SamplingParams(max_tokens=2)))
            took = time.monotonic() - start
        assert new.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(new.value.trailing_metadata()).get("retry-after")
        assert took < 10.0, took          # refused from the pool's state, not after a timeout
