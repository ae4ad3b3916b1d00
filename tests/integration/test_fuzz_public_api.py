"""Hostile input against a running gateway (real workers on loopback): hypothesis-generated OpenAI
JSON bodies (and raw bytes) for /v1/completions and /v1/chat/completions, and GenerateRequest
messages (and raw bytes) for tandem.v1.Generation/Generate. Every input gets a success or a clear
client error naming the field (HTTP 400 with `param`, 404 for an unknown model; gRPC
INVALID_ARGUMENT / NOT_FOUND): never a 500, INTERNAL, a stack trace or a dead worker. After each
batch the server still serves a plain request and no KV block is leaked."""

from __future__ import annotations

import json

import aiohttp
import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.rpc.tandem.v1 import generation_pb2 as gen
from tests.helpers.background_cluster import BackgroundCluster
from tests.helpers.gateway_cluster import engine_config

pytestmark = pytest.mark.timeout(300)

MAX_MODEL_LEN = 48          # keeps every accepted request short: fuzzing is about input, not load
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=True)


@pytest.fixture(scope="module")
def server():
    bg = BackgroundCluster("disaggregated", engine=engine_config(num_blocks=32, max_num_seqs=8,
                                                                 max_model_len=MAX_MODEL_LEN))
    with bg:
        yield bg


# --- values a hostile client sends ---------------------------------------------------------------
_ODD_INTS = st.sampled_from([0, -1, 1, 2, 47, 48, 49, 511, 512, 2**31 - 1, 2**31, 2**32, 2**63,
                             2**64, -2**63, 10**30])
_ODD_FLOATS = st.sampled_from([0.0, -0.0, 1e-320, 0.5, 1.0, 1.0000001, 2.0, -1.0, 1e308,
                               float("inf"), float("-inf"), float("nan")])
_ODD_TEXT = st.text(st.characters(), max_size=12) | st.sampled_from(
    ["", "\x00", "\ud800", "\udfff\ud800", "\u202e", "a" * 600, "<|eot_id|>", "<s>", "\r\n\r\n"])
_SCALAR = (st.none() | st.booleans() | _ODD_INTS | st.integers(-100, 100) | _ODD_FLOATS
           | st.floats(-3, 3) | _ODD_TEXT)
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(_ODD_TEXT, inner, max_size=3), max_leaves=10)
_TOKEN_IDS = st.lists(_ODD_INTS | st.integers(0, 600), min_size=0, max_size=8)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]) | _VALUE},
                                 optional={"content": _ODD_TEXT | _VALUE, "name": _VALUE})

_FIELDS = {
    "model": st.sampled_from(["tiny-random", "", "gpt-9"]) | _VALUE,
    "prompt": _ODD_TEXT | _TOKEN_IDS | st.lists(_ODD_TEXT | _TOKEN_IDS, max_size=2) | _VALUE,
    "messages": st.lists(_MESSAGE, max_size=3) | _VALUE,
    "max_tokens": st.integers(-2, MAX_MODEL_LEN + 2) | _ODD_INTS | _VALUE,
    "max_completion_tokens": st.integers(-2, 8) | _VALUE,
    "temperature": _ODD_FLOATS | st.floats(0, 2) | _VALUE,
    "top_p": _ODD_FLOATS | _VALUE,
    "top_k": _ODD_INTS | st.integers(-3, 600) | _VALUE,
    "seed": _ODD_INTS | _VALUE,
    "stop": _ODD_TEXT | st.lists(_ODD_TEXT, max_size=20) | _VALUE,
    "logprobs": st.booleans() | _ODD_INTS | st.integers(-1, 25) | _VALUE,
    "top_logprobs": _ODD_INTS | st.integers(-1, 25) | _VALUE,
    "n": _ODD_INTS | _VALUE, "best_of": _ODD_INTS | _VALUE, "echo": _VALUE,
    "stream": st.booleans() | _VALUE,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | _VALUE}) | _VALUE,
    "ignore_eos": st.booleans() | _VALUE, "user": _VALUE, "suffix": _VALUE, "logit_bias": _VALUE,
    "presence_penalty": _ODD_FLOATS | _VALUE, "frequency_penalty": _ODD_FLOATS | _VALUE,
    "tools": _VALUE, "response_format": _VALUE,
}
_BODY = st.fixed_dictionaries({}, optional=_FIELDS)
# Valid enough to reach tokenization, admission and the workers, each field of the right type
# but at its edges (or, now and then, of any type at all).
_PLAUSIBLE = {
    "temperature": _ODD_FLOATS | st.floats(0, 2), "top_p": _ODD_FLOATS | st.floats(0, 1),
    "top_k": _ODD_INTS | st.integers(-3, 600), "seed": _ODD_INTS | st.integers(0, 2**63),
    "stop": _ODD_TEXT | st.lists(_ODD_TEXT, max_size=20), "logprobs": st.booleans() | st.integers(-1, 25),
    "top_logprobs": st.integers(-1, 25), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(), "user": _ODD_TEXT, "n": st.just(1), "model": st.just("tiny-random"),
}
_NEAR_VALID = st.builds(
    lambda base, extra, wild: {**base, **extra, **wild},
    st.fixed_dictionaries({"prompt": _ODD_TEXT | _TOKEN_IDS | st.text(min_size=1, max_size=30),
                           "max_tokens": st.integers(1, 6),
                           "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                                       "content": _ODD_TEXT}),
                                                min_size=1, max_size=2)}),
    st.fixed_dictionaries({}, optional=_PLAUSIBLE),
    st.fixed_dictionaries({}, optional={k: _FIELDS[k] for k in ("temperature", "stop", "logprobs")}) | st.just({}))
_RAW = st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[]", b"null", b'{"prompt": NaN}',
                                                 b'{"prompt": "x", "max_tokens": Infinity}',
                                                 b"[" * 100_000, b'{"prompt": "\\ud800"}',
                                                 b'\xef\xbb\xbf{"prompt": "x"}', b'{"prompt": "x"}' * 2])


# --- HTTP ----------------------------------------------------------------------------------------
async def _post(url: str, data: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=data, headers={"content-type": "application/json"}) as r:
            return r.status, await r.read()


def _check_http(status: int, body: bytes) -> None:
    event(f"HTTP {status}")
    assert status in (200, 400, 404), (status, body[:500])
    if status == 200:
        text = body.decode()
        if text.startswith("data:"):       # SSE: no error event, and the stream ends properly
            events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]", text[-500:]
            for sse in events[:-1]:
                assert "error" not in json.loads(sse), sse
        else:
            assert json.loads(text)["choices"], text
        return
    err = json.loads(body)["error"]
    assert err["message"] and "Traceback" not in err["message"], err
    if status == 400:
        assert isinstance(err["param"], str) and err["param"], err
        event(f"400 {err['param'][:30]}")


def _send_http(server, path: str, data: bytes) -> None:
    status, body = server.run(_post(server.cluster.gateway.http_url + path, data))
    _check_http(status, body)


def _dumps(body) -> bytes:
    # allow_nan: hostile clients send NaN/Infinity literals, which Python's json also reads
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@FUZZ
@given(body=_NEAR_VALID, chat=st.booleans())
def test_http_plausible_bodies_get_a_success_or_a_named_field(server, body, chat):
    _send_http(server, "/v1/chat/completions" if chat else "/v1/completions", _dumps(body))


@FUZZ
@given(body=_BODY | _VALUE, chat=st.booleans())
def test_http_any_json_gets_a_success_or_a_named_field(server, body, chat):
    _send_http(server, "/v1/chat/completions" if chat else "/v1/completions", _dumps(body))


@settings(FUZZ, max_examples=30)
@given(data=_RAW, chat=st.booleans())
def test_http_raw_bytes_get_a_clear_400(server, data, chat):
    _send_http(server, "/v1/chat/completions" if chat else "/v1/completions", data)


# --- gRPC ----------------------------------------------------------------------------------------
_U32 = st.integers(0, 2**32 - 1)
_PROTO_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", "\x00", "a" * 600, "<|eot_id|>", "\u202e"])
_SAMPLING = st.fixed_dictionaries({}, optional={
    "temperature": _ODD_FLOATS | st.floats(0, 2, width=32), "top_p": _ODD_FLOATS,
    "top_k": st.integers(-2**31, 2**31 - 1) | st.integers(-3, 600),
    "seed": st.integers(0, 2**64 - 1), "max_tokens": _U32 | st.integers(0, 8),
    "stop": st.lists(_PROTO_TEXT, max_size=40), "stop_token_ids": st.lists(_U32 | st.integers(0, 600), max_size=40),
    "ignore_eos": st.booleans(), "logprobs": _U32 | st.integers(0, 25),
})
_REQUEST = st.builds(
    lambda rid, model, prompt, sampling: gen.GenerateRequest(
        request_id=rid, model=model, sampling=gen.SamplingParams(**sampling) if sampling is not None else None,
        **prompt),
    st.sampled_from(["", "r"]) | _PROTO_TEXT | st.text(max_size=200, min_size=129),
    st.sampled_from(["", "", "tiny-random", "gpt-9"]),
    st.just({}) | st.builds(lambda t: {"text": t}, _PROTO_TEXT)
    | st.builds(lambda ids: {"token_ids": gen.TokenIds(ids=ids)}, st.lists(_U32 | st.integers(0, 600), max_size=8)),
    st.none() | _SAMPLING)


_PLAUSIBLE_SAMPLING = st.fixed_dictionaries({"max_tokens": st.integers(1, 6)}, optional={
    "temperature": st.floats(0, 2, width=32) | st.sampled_from([0.0, 1e-30, 1e30]),
    "top_p": st.floats(0, 1, width=32, exclude_min=True) | st.just(1.0), "top_k": st.integers(-1, 600) | st.just(2**31 - 1),
    "seed": st.integers(0, 2**63 - 1), "stop": st.lists(_PROTO_TEXT.filter(bool), max_size=20),
    "stop_token_ids": st.lists(_U32 | st.integers(0, 511), max_size=40), "ignore_eos": st.booleans(),
    "logprobs": st.integers(0, 20)})
_PLAUSIBLE_REQUEST = st.builds(
    lambda prompt, sampling: gen.GenerateRequest(sampling=gen.SamplingParams(**sampling), **prompt),
    st.builds(lambda t: {"text": t}, _PROTO_TEXT.filter(bool))
    | st.builds(lambda ids: {"token_ids": gen.TokenIds(ids=ids)}, st.lists(st.integers(0, 511), min_size=1,
                                                                             max_size=40)),
    _PLAUSIBLE_SAMPLING)


def _grpc_call(server, payload: bytes) -> tuple[grpc.StatusCode, str, list[gen.GenerateResponse]]:
    async def call():
        async with grpc.aio.insecure_channel(server.cluster.gateway.grpc_address) as ch:
            method = ch.unary_stream("/tandem.v1.Generation/Generate", request_serializer=lambda b: b,
                                     response_deserializer=gen.GenerateResponse.FromString)
            stream = method(payload, timeout=60)
            try:
                msgs = [m async for m in stream]
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or "", []
            return grpc.StatusCode.OK, "", msgs
    return server.run(call())


def _check_grpc(code: grpc.StatusCode, details: str, msgs: list) -> None:
    event(f"gRPC {code.name}")
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), \
        (code, details)
    if code == grpc.StatusCode.OK:
        assert msgs and msgs[-1].finish_reason != gen.FINISH_REASON_UNSPECIFIED
        assert msgs[-1].usage.completion_tokens == sum(len(m.token_ids) for m in msgs)
    else:
        assert details and "Traceback" not in details, details
        event(f"{code.name} {details[:30]}")


@FUZZ
@given(request=_PLAUSIBLE_REQUEST)
def test_grpc_plausible_requests_get_a_success_or_invalid_argument(server, request):
    _check_grpc(*_grpc_call(server, request.SerializeToString()))


@FUZZ
@given(request=_REQUEST)
def test_grpc_requests_get_a_success_or_invalid_argument(server, request):
    _check_grpc(*_grpc_call(server, request.SerializeToString()))


@settings(FUZZ, max_examples=30)
@given(data=st.binary(max_size=64))
def test_grpc_raw_bytes_get_invalid_argument(server, data):
    _check_grpc(*_grpc_call(server, data))


def test_grpc_stop_strings_have_the_http_limit(server):
    request = gen.GenerateRequest(text="x", sampling=gen.SamplingParams(max_tokens=2, stop=["s"] * 17))
    code, details, _ = _grpc_call(server, request.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("stop: at most 16"), details


def test_server_serves_normally_after_the_fuzzing(server):
    """Runs after the properties above (file order): nothing leaked, nothing stuck, still serving."""
    status, body = server.run(_post(server.cluster.gateway.http_url + "/v1/completions",
                                    _dumps({"prompt": "hello", "max_tokens": 4, "ignore_eos": True})))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4
    assert server.run(server.cluster.blocks_all_free()), server.cluster.free_blocks()
