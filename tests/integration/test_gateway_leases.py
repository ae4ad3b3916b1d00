"""Under a long prefill queue, no admitted request is lost: reservations whose requests wait
behind other prefills (much longer than their ttl) are renewed by the gateway, transfers beyond
what the decode side lands at once wait instead of being refused, and whatever is refused is
RESOURCE_EXHAUSTED before admission (nothing streamed), never a failure after it."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest

from services.gateway.config import AdmissionConfig
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import engine_config, gateway_cluster, replace_engine

pytestmark = pytest.mark.timeout(240)

# Far shorter than the queue (each request waits several ttls for prefill), yet long enough that
# a renewal every third of it survives a busy 2-core machine's scheduling delays.
TTL_S = 1.0
STREAMS = 48


async def _run_streams(address: str, streams: int, max_tokens: int) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(address) as ch:
        stub = gen_grpc.GenerationStub(ch)

        async def one(i: int) -> None:
            received = 0
            try:
                async for msg in stub.Generate(gen.GenerateRequest(
                        # ~40-token prompts: the prefill worker runs them a few at a time
                        text=" ".join(f"word{i}x{j}" for j in range(12)),
                        sampling=gen.SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                                    ignore_eos=True))):
                    received += len(msg.token_ids)
                outcomes["ok" if received == max_tokens else f"short:{received}"] += 1
            except grpc.aio.AioRpcError as exc:
                stage = "after_first_token" if received else "before_first_token"
                outcomes[f"{exc.code().name}:{stage}"] += 1

        await asyncio.gather(*(one(i) for i in range(streams)))
    return outcomes


async def test_requests_queued_for_prefill_longer_than_their_ttl_all_complete():
    decode = engine_config(num_blocks=512, max_num_seqs=STREAMS)
    # The prefill worker takes few prompt tokens per step: the queue drains slowly.
    prefill = replace_engine(engine_config(num_blocks=512, max_num_seqs=4), max_num_batched_tokens=32)
    async with gateway_cluster("disaggregated", engine=prefill, decode_engine=decode,
                               reservation_ttl_s=TTL_S,
                               admission=AdmissionConfig(queue_timeout_s=60.0)) as c:
        outcomes = await _run_streams(c.gateway.grpc_address, STREAMS, max_tokens=4)
        assert outcomes == {"ok": STREAMS}, outcomes
        # The waits really were longer than a ttl: leases were renewed, none expired.
        registry = c.gateway.metrics.registry
        assert registry.get_sample_value("tandem_reservation_renewals_total") > 0
        assert not registry.get_sample_value("tandem_reservations_lost_total")
        assert all(t.worker.reservations.num_expired == 0 for t in c.decode)
        assert await c.blocks_all_free(), c.free_blocks()
        assert c.gateway.admission.running == 0


async def test_refusals_under_overload_come_before_admission_only():
    decode = engine_config(num_blocks=64, max_num_seqs=16)
    prefill = replace_engine(engine_config(num_blocks=256, max_num_seqs=4), max_num_batched_tokens=32)
    async with gateway_cluster("disaggregated", engine=prefill, decode_engine=decode,
                               reservation_ttl_s=TTL_S,
                               admission=AdmissionConfig(max_queued_requests=8, queue_timeout_s=2.0)) as c:
        outcomes = await _run_streams(c.gateway.grpc_address, STREAMS, max_tokens=4)
        failures = {k: v for k, v in outcomes.items() if k != "ok"}
        assert set(failures) <= {"RESOURCE_EXHAUSTED:before_first_token"}, outcomes
        assert outcomes["ok"] > 0
        assert await c.blocks_all_free(), c.free_blocks()
        assert c.gateway.admission.running == 0
