"""The gateway's security from outside: its API keys appear in no log record, whether requests
bring them right, wrong or not at all; TLS on gRPC and HTTP from certificate files (a self-signed
certificate made here), with client certificates required when a client CA is given."""

import logging
import ssl

import aiohttp
import grpc
import pytest

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.engine.errors import ConfigError
from services.security.tls import TlsConfig
from tests.helpers.certificates import self_signed
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


async def _grpc_generate(channel) -> list:
    request = gen.GenerateRequest(text="hello", sampling=gen.SamplingParams(max_tokens=3))
    return [m async for m in gen_grpc.GenerationStub(channel).Generate(request, timeout=30)]


async def test_tls_on_grpc_and_http(tmp_path):
    server = self_signed(tmp_path, "server")
    async with gateway_cluster("colocated", tls=TlsConfig(server.cert_file, server.key_file)) as c:
        gw = c.gateway
        assert gw.http_url.startswith("https://")
        credentials = grpc.ssl_channel_credentials(root_certificates=server.cert_pem)
        async with grpc.aio.secure_channel(gw.grpc_address, credentials) as ch:
            assert (await _grpc_generate(ch))[-1].usage.completion_tokens == 3
        async with grpc.aio.insecure_channel(gw.grpc_address) as ch:      # plaintext: no answer
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _grpc_generate(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        trusted = ssl.create_default_context(cafile=server.cert_file)
        body = {"model": "tiny-random", "prompt": "hello", "max_tokens": 3}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.http_url}/v1/completions", json=body, ssl=trusted) as r:
                assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3
            with pytest.raises(aiohttp.ClientConnectorCertificateError):     # an untrusted server
                async with http.get(f"{gw.http_url}/health", ssl=ssl.create_default_context()):
                    pass
            with pytest.raises(aiohttp.ClientError):                         # plaintext HTTP
                async with http.get(gw.http_url.replace("https://", "http://") + "/health") as r:
                    await r.read()


async def test_mutual_tls_needs_a_client_certificate(tmp_path):
    server, client = self_signed(tmp_path, "server"), self_signed(tmp_path, "client")
    tls = TlsConfig(server.cert_file, server.key_file, client_ca_file=client.cert_file)
    async with gateway_cluster("colocated", tls=tls) as c:
        gw = c.gateway
        with_cert = grpc.ssl_channel_credentials(server.cert_pem, client.key_pem, client.cert_pem)
        async with grpc.aio.secure_channel(gw.grpc_address, with_cert) as ch:
            assert (await _grpc_generate(ch))[-1].usage.completion_tokens == 3
        async with grpc.aio.secure_channel(gw.grpc_address, grpc.ssl_channel_credentials(server.cert_pem)) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _grpc_generate(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        context = ssl.create_default_context(cafile=server.cert_file)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"{gw.http_url}/health", ssl=context) as r:
                    await r.read()
            context.load_cert_chain(client.cert_file, client.key_file)
            async with http.get(f"{gw.http_url}/health", ssl=context) as r:
                assert r.status == 200


def test_tls_files_are_checked_at_start(tmp_path):
    server = self_signed(tmp_path, "server")
    with pytest.raises(ConfigError, match="--tls-key .*not a readable file"):
        TlsConfig(server.cert_file, str(tmp_path / "absent.key"))
    with pytest.raises(ConfigError, match="--tls-cert .*cannot load them"):
        TlsConfig(server.key_file, server.key_file)
    other = self_signed(tmp_path, "other")
    with pytest.raises(ConfigError, match="cannot load them"):         # key of another certificate
        TlsConfig(server.cert_file, other.key_file)
