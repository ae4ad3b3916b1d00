"""The gateway's security from outside: its API keys appear in no log record, whether requests
bring them right, wrong or not at all."""

import logging

import aiohttp
import grpc
import pytest

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)

KEY = "sk-tandem-secret-7f3a9c"
WRONG = "sk-tandem-wrong-51d0e2"


async def test_api_keys_are_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    async with gateway_cluster("colocated", api_keys=(KEY,)) as c:
        gw = c.gateway
        body = {"model": "tiny-random", "prompt": "hello", "max_tokens": 3}
        async with aiohttp.ClientSession() as http:
            for headers, status in (({"Authorization": f"Bearer {KEY}"}, 200),
                                    ({"Authorization": f"Bearer {WRONG}"}, 401),
                                    ({"X-Api-Key": WRONG}, 401), ({}, 401)):
                async with http.post(f"{gw.http_url}/v1/completions", json=body, headers=headers) as r:
                    assert r.status == status, await r.text()
                    assert WRONG not in await r.text()
        async with grpc.aio.insecure_channel(gw.grpc_address) as ch:
            stub = gen_grpc.GenerationStub(ch)
            request = gen.GenerateRequest(text="hello", sampling=gen.SamplingParams(max_tokens=3))
            assert [m async for m in stub.Generate(request, metadata=(("x-api-key", KEY),))]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [m async for m in stub.Generate(request, metadata=(("authorization", f"Bearer {WRONG}"),))]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert WRONG not in info.value.details()
    assert caplog.records          # the gateway and workers did log (start-up, requests)
    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        assert KEY not in text and WRONG not in text, record
