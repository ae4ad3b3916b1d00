"""Hostile input on the workers' own RPCs, as any client on the cluster network could send them:
hypothesis-generated Reserve / Renew / Decode / Cancel / Load calls to a decode worker, Prefill
to a prefill worker, and KV page streams (raw bytes, msgpack maps, header/data/end sequences with
wrong fields) to the decode worker's KVTransfer.PushPages. Every call ends with a status that
names the problem (never INTERNAL / UNKNOWN, never a hang), the workers keep serving, and once
the fuzzed request ids are cancelled every KV block is free and both pools pass check_integrity."""

from __future__ import annotations

import json

import aiohttp
import grpc
import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import worker_pb2 as wpb
from services.rpc.tandem.v1 import worker_pb2_grpc as wgrpc
from tests.helpers.background_cluster import BackgroundCluster
from tests.helpers.gateway_cluster import engine_config

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
CALL_TIMEOUT_S = 60.0        # far beyond any fuzzed TTL: running into it means a call hung
IDS = ("a", "b", "c")        # few ids, so calls meet each other's reservations and requests
_ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNAVAILABLE}


@pytest.fixture(scope="module")
def server():
    bg = BackgroundCluster("disaggregated", engine=engine_config(num_blocks=32, max_num_seqs=8, max_model_len=48))
    with bg:
        yield bg
        for rid in IDS + ("",):
            bg.run(_cancel_everywhere(bg, rid))
        assert bg.run(bg.cluster.blocks_all_free(within_s=10.0)), bg.cluster.free_blocks()


async def _cancel_everywhere(bg, rid: str) -> None:
    for t in bg.cluster.workers:
        async with grpc.aio.insecure_channel(t.address) as ch:
            stub = (wgrpc.DecodeWorkerStub if t in bg.cluster.decode else wgrpc.PrefillWorkerStub)(ch)
            try:
                await stub.Cancel(wpb.CancelRequest(request_id=rid), timeout=10)
            except grpc.aio.AioRpcError:
                pass


def _outcome(code: grpc.StatusCode, details: str) -> None:
    event(code.name)
    assert code in _ALLOWED, (code, details)
    if code != grpc.StatusCode.OK:
        assert details and "Traceback" not in details, details


async def _call(address: str, make_stub, method: str, request, stream: bool = False):
    async with grpc.aio.insecure_channel(address) as ch:
        rpc = getattr(make_stub(ch), method)
        try:
            if stream:
                return grpc.StatusCode.OK, "", [m async for m in rpc(request, timeout=CALL_TIMEOUT_S)]
            return grpc.StatusCode.OK, "", await rpc(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", None


# --- strategies -----------------------------------------------------------------------------------
_RID = st.sampled_from(IDS + ("",)) | st.text(max_size=4)
_U32 = st.integers(0, 2**32 - 1)
_IDS = st.lists(st.integers(0, 520) | _U32, max_size=12)
_TTL = st.integers(1, 1500) | st.sampled_from([600_001, 2**32 - 1])   # 0 means the 30 s default
_SAMPLING = st.none() | st.builds(lambda kw: gen.SamplingParams(**kw), st.fixed_dictionaries({}, optional={
    "temperature": st.floats(-1, 2, width=32), "max_tokens": st.integers(0, 8) | _U32,
    "top_k": st.integers(-2, 600), "top_p": st.floats(0, 1.5, width=32), "logprobs": st.integers(0, 25),
    "stop_token_ids": _IDS, "ignore_eos": st.booleans()}))
_RESERVE = st.builds(wpb.ReserveRequest, request_id=_RID, num_tokens=st.integers(0, 80) | _U32, ttl_ms=_TTL)
_RENEW = st.builds(wpb.RenewRequest, request_ids=st.lists(_RID, max_size=4), ttl_ms=_TTL)
_DECODE = st.builds(lambda sampling, **kw: wpb.DecodeRequest(sampling=sampling, **kw), sampling=_SAMPLING,
                    request_id=_RID, prompt_token_ids=_IDS, prefill_here=st.booleans(),
                    generated_token_ids=st.lists(st.integers(0, 520), max_size=3))
_CANCEL = st.builds(wpb.CancelRequest, request_id=_RID)
_LOAD = st.builds(wpb.LoadRequest, check_integrity=st.booleans())
_DECODE_CALL = (st.tuples(st.just("Reserve"), _RESERVE) | st.tuples(st.just("Renew"), _RENEW)
                | st.tuples(st.just("Decode"), _DECODE) | st.tuples(st.just("Cancel"), _CANCEL)
                | st.tuples(st.just("Load"), _LOAD))


@FUZZ
@given(calls=st.lists(_DECODE_CALL, min_size=1, max_size=4))
def test_decode_worker_rpcs_answer_with_a_status(server, calls):
    address = server.cluster.decode[0].address
    for method, request in calls:
        code, details, reply = server.run(_call(address, wgrpc.DecodeWorkerStub, method, request,
                                                stream=method == "Decode"), CALL_TIMEOUT_S + 10)
        _outcome(code, details)
        if method == "Load" and request.check_integrity and code == grpc.StatusCode.OK:
            assert reply.integrity_error == "", reply.integrity_error


def _prefill_request(kv: str, transport: str, **kw) -> wpb.PrefillRequest:
    return wpb.PrefillRequest(kv_address=kv, transport=transport, **kw)


@FUZZ
@given(rid=_RID, prompt=_IDS, sampling=_SAMPLING, to_decode=st.booleans(),
       transport=st.sampled_from(["", "grpc", "local", "auto", "cuda_ipc", "carrier-pigeon"]),
       blocks=st.lists(st.integers(0, 40) | _U32, max_size=4), reserve_first=st.booleans())
def test_prefill_worker_rpcs_answer_with_a_status(server, rid, prompt, sampling, to_decode, transport,
                                                  blocks, reserve_first):
    decode = server.cluster.decode[0]
    kv = decode.worker.kv_address if to_decode else ""
    if reserve_first:
        code, details, _ = server.run(_call(decode.address, wgrpc.DecodeWorkerStub, "Reserve",
                                            wpb.ReserveRequest(request_id=rid, num_tokens=48, ttl_ms=1000)))
        _outcome(code, details)
    request = _prefill_request(kv, transport, request_id=rid, prompt_token_ids=prompt,
                               sampling=sampling, kv_block_ids=blocks)
    code, details, _ = server.run(_call(server.cluster.prefill[0].address, wgrpc.PrefillWorkerStub,
                                        "Prefill", request), CALL_TIMEOUT_S + 10)
    _outcome(code, details)
    server.run(_call(decode.address, wgrpc.DecodeWorkerStub, "Cancel", wpb.CancelRequest(request_id=rid)))


# --- KV page streams ------------------------------------------------------------------------------
_ANY = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=6) | st.binary(max_size=6) \
    | st.lists(st.integers(-5, 2**33), max_size=6)
_HEADER = st.fixed_dictionaries(
    {"kind": st.just("header")},
    optional={"request_id": _RID | _ANY, "dtype": st.sampled_from(["float32", "bfloat16", "int8", "nope"]) | _ANY,
              "page_shape": st.lists(st.integers(-1, 64), max_size=6) | _ANY, "num_tokens": st.integers(-1, 64) | _ANY,
              "total_pages": st.integers(-1, 5) | _ANY, "first_page": st.integers(-1, 5) | _ANY,
              "num_pages": st.integers(-1, 5) | _ANY, "block_ids": st.lists(st.integers(-1, 40), max_size=5) | _ANY,
              "checksum": st.sampled_from(["xxh3_64", "crc32", "md5"]) | _ANY})


def _data_frame(offset, payload: bytes, lie: int) -> bytes:
    return msgpack.packb({"kind": "data", "offset": offset, "nbytes": len(payload) + lie}) + payload


_DATA = st.builds(_data_frame, st.integers(-1, 10_000) | _ANY, st.binary(max_size=300), st.sampled_from([0, 0, 1, -1]))
_END = st.builds(lambda total, sums: msgpack.packb({"kind": "end", "total_bytes": total, "checksums": sums}),
                 st.integers(-1, 10_000) | _ANY, st.lists(st.integers(0, 2**64 - 1), max_size=4) | _ANY)
_FRAME = (st.builds(msgpack.packb, _HEADER) | _DATA | _END | st.binary(max_size=40)
          | st.builds(msgpack.packb, st.dictionaries(st.text(max_size=5), _ANY, max_size=4)))


async def _push(address: str, frames: list[bytes]):
    async def chunks():
        for f in frames:
            yield wpb.KVChunk(frame=f)
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            return grpc.StatusCode.OK, "", await wgrpc.KVTransferStub(ch).PushPages(chunks(), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", None


@FUZZ
@given(frames=st.lists(_FRAME, max_size=5), reserve_first=st.booleans())
def test_kv_page_streams_are_refused_cleanly(server, frames, reserve_first):
    decode = server.cluster.decode[0]
    if reserve_first:
        code, details, _ = server.run(_call(decode.address, wgrpc.DecodeWorkerStub, "Reserve",
                                            wpb.ReserveRequest(request_id="a", num_tokens=40, ttl_ms=1000)))
        _outcome(code, details)
    code, details, ack = server.run(_push(decode.worker.kv_address, frames), CALL_TIMEOUT_S + 10)
    _outcome(code, details)
    if ack is not None:
        event(f"ack ok={ack.ok}")
        assert ack.ok or ack.error, ack
    server.run(_call(decode.address, wgrpc.DecodeWorkerStub, "Cancel", wpb.CancelRequest(request_id="a")))


def test_workers_serve_normally_after_the_fuzzing(server):
    async def post():
        async with aiohttp.ClientSession() as s:
            async with s.post(server.cluster.gateway.http_url + "/v1/completions",
                              json={"prompt": "hello", "max_tokens": 4, "ignore_eos": True}) as r:
                return r.status, await r.read()
    status, body = server.run(post())
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4, body
