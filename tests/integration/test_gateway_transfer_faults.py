"""A transfer rejected on arrival (its checksums do not match) fails the prefill, and the gateway
prefills the request again: the client gets exactly the tokens of an undamaged run, and the
decode worker never ran anything from the rejected pages."""

from __future__ import annotations

import grpc
import pytest

from services.kvtransfer import frames
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)


async def _tokens(address: str, text: str) -> list[int]:
    async with grpc.aio.insecure_channel(address) as ch:
        out = []
        async for msg in gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                text=text, sampling=gen.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))):
            out += msg.token_ids
        return out


async def test_a_corrupted_transfer_is_prefilled_again_and_the_tokens_are_right(monkeypatch):
    text = "the same prompt, twice " * 3
    async with gateway_cluster("disaggregated", kv_transport="grpc") as c:
        encode_end, damaged = frames.encode_end, []

        def damage_first(page_checksums, total_bytes):
            if not damaged:                     # the first transfer's checksums are wrong
                damaged.append(True)
                page_checksums = [s ^ 1 for s in page_checksums]
            return encode_end(page_checksums, total_bytes)
        monkeypatch.setattr(frames, "encode_end", damage_first)
        got = await _tokens(c.gateway.grpc_address, text)
        monkeypatch.setattr(frames, "encode_end", encode_end)
        assert damaged
        assert got == await _tokens(c.gateway.grpc_address, text) and len(got) == 6
        retries = c.gateway.metrics.registry.get_sample_value(
            "tandem_request_retries_total", {"stage": "before_first_token"})
        assert retries == 1
        decode = c.decode[0].worker
        assert decode.prompt_counter.prompt_tokens == 0       # nothing recomputed from bad pages
        assert await c.blocks_all_free(), c.free_blocks()
