"""What the OpenAI backend takes from each SSE event, and backend configuration checks."""

import json

import pytest

from loadgen.backends import BackendConfig, make_backend
from loadgen.errors import BenchConfigError
from loadgen.records import BenchRequest, RequestRecord


def backend(kind="openai", **changes):
    return make_backend(BackendConfig(kind, "http://127.0.0.1:1", model="m", **changes))


def feed(b, events, record=None):
    record = record or RequestRecord(index=0, prompt_len=1, output_len_requested=4)
    done = False
    for t, event in enumerate(events):
        done = b._on_event(event if isinstance(event, str) else json.dumps(event), float(t), record) or done
    return record, done


def test_completions_events():
    r, done = feed(backend(), [{"choices": [{"text": " a", "finish_reason": None}]},
                               {"choices": [{"text": "", "finish_reason": None}]},      # no output: no chunk
                               {"choices": [{"text": " b", "finish_reason": "length"}]},
                               {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
                               "[DONE]"])
    assert done and r.ok
    assert r.chunk_times == [0.0, 2.0] and r.text_parts == [" a", " b"]
    assert (r.finish_reason, r.server_prompt_tokens, r.server_output_tokens, r.end) == ("length", 7, 2, 4.0)


def test_chat_events_skip_the_role_chunk():
    r, _ = feed(backend("openai-chat"), [{"choices": [{"delta": {"role": "assistant"}}]},
                                         {"choices": [{"delta": {"content": "hi"}}]}])
    assert r.chunk_times == [1.0] and r.text_parts == ["hi"]


def test_error_and_garbage_events_fail_the_request():
    r, _ = feed(backend(), [{"error": {"message": "overloaded", "code": 503}}])
    assert r.error == "stream_error" and "overloaded" in r.error_detail
    r, _ = feed(backend(), ["{not json"])
    assert r.error == "bad_event"


def test_payloads():
    b = backend(ignore_eos=True, temperature=0.0)
    body = json.loads(b._payload(BenchRequest("hello", 1, 9)))
    assert body == {"model": "m", "max_tokens": 9, "stream": True, "stream_options": {"include_usage": True},
                    "prompt": "hello", "ignore_eos": True, "temperature": 0.0}
    chat = json.loads(backend("openai-chat")._payload(BenchRequest("hello", 1, 9)))
    assert chat["messages"] == [{"role": "user", "content": "hello"}] and "ignore_eos" not in chat
    assert backend().url.endswith("/v1/completions") and backend("openai-chat").url.endswith("/v1/chat/completions")
    assert backend(endpoint="/generate_stream").url == "http://127.0.0.1:1/generate_stream"


def test_tandem_message():
    b = make_backend(BackendConfig("tandem", "grpc://127.0.0.1:1", model="m", ignore_eos=True, api_key="k"))
    msg = b._message(BenchRequest("hello", 1, 5))
    assert (msg.text, msg.model, msg.sampling.max_tokens, msg.sampling.ignore_eos) == ("hello", "m", 5, True)
    assert not msg.sampling.HasField("temperature")
    assert b.address == "127.0.0.1:1" and b._metadata == (("authorization", "Bearer k"),)


@pytest.mark.parametrize("changes, flag", [(dict(kind="vllm"), "--backend"), (dict(base_url=""), "--base-url"),
                                           (dict(base_url="127.0.0.1:8000"), "--base-url"),
                                           (dict(temperature=-1.0), "--temperature")])
def test_config_validation(changes, flag):
    fields = dict(kind="openai", base_url="http://127.0.0.1:1") | changes
    with pytest.raises(BenchConfigError, match=flag):
        BackendConfig(**fields)
