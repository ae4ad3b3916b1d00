"""OpenAI response bodies and SSE chunks from GenerationDeltas."""

import json

import pytest

from services.engine.loader import load_tokenizer
from services.engine.outputs import TokenLogprob
from services.gateway.openai_responses import SSE_DONE, ResponseWriter, sse_event
from services.gateway.request import GenerationDelta, Usage


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-random").tokenizer


def parse(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[6:])


def test_sse_framing():
    assert sse_event({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_completion_full_response(tokenizer):
    w = ResponseWriter(False, "m", "abc", tokenizer)
    deltas = [GenerationDelta((101,), "e", (TokenLogprob(101, -0.5, ((101, -0.5), (102, -1.0))),)),
              GenerationDelta((102,), "f", (TokenLogprob(102, -0.25, ()),), "length", Usage(3, 2, 0))]
    body = w.full_response(deltas, want_logprobs=True)
    assert body["id"] == "cmpl-abc" and body["object"] == "text_completion"
    choice = body["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("ef", "length")
    assert choice["logprobs"]["token_logprobs"] == [-0.5, -0.25]
    assert choice["logprobs"]["text_offset"] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_chat_stream_chunks(tokenizer):
    w = ResponseWriter(True, "m", "abc", tokenizer)
    first = parse(w.chunk(GenerationDelta((101,), "e", None), False, include_usage=True))
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "e"}
    last = parse(w.chunk(GenerationDelta((102,), "", None, "stop", Usage(3, 2, 1)), False, True))
    assert last["choices"][0]["delta"] == {"content": ""} and last["choices"][0]["finish_reason"] == "stop"
    usage = parse(w.usage_chunk(Usage(3, 2, 1)))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5


def test_chat_logprobs_shape(tokenizer):
    w = ResponseWriter(True, "m", "abc", tokenizer)
    body = w.full_response([GenerationDelta((101,), "e", (TokenLogprob(101, -0.5, ((101, -0.5),)),),
                                            "stop", Usage(1, 1, 0))], want_logprobs=True)
    content = body["choices"][0]["logprobs"]["content"]
    assert content[0]["token"] == "e" and content[0]["top_logprobs"][0]["logprob"] == -0.5
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "e"}
