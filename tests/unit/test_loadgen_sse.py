"""SSE parsing: events come out whole whatever the chunk boundaries; a hostile server (any bytes,
any event payload, endless lines) gets its request recorded as failed, never an exception or
unbounded memory."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from loadgen.backends.base import BackendConfig
from loadgen.backends.openai_http import OpenAIBackend
from loadgen.backends.sse import MAX_EVENT_BYTES, SSEDecoder, SSEError
from loadgen.records import RequestRecord

STREAM = (b": keep-alive comment\n\n"
          b"data: {\"a\": 1}\n\n"
          b"data:{\"b\": 2}\r\n\r\n"
          b"event: message\ndata: line one\ndata: line two\n\n"
          b"data: [DONE]\n\n")
EXPECTED = ['{"a": 1}', '{"b": 2}', "line one\nline two", "[DONE]"]


def test_whole_stream():
    decoder = SSEDecoder()
    assert decoder.feed(STREAM) + decoder.flush() == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split(cuts):
    decoder = SSEDecoder()
    events, start = [], 0
    for cut in sorted(cuts) + [len(STREAM)]:
        events += decoder.feed(STREAM[start:cut])
        start = cut
    assert events + decoder.flush() == EXPECTED


def test_flush_emits_an_unterminated_last_event():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: tail") == ["x"]
    assert decoder.flush() == ["tail"]
    assert decoder.flush() == []


# --- hostile servers: whatever the events hold, the request is recorded, never an exception -----


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["choices", "usage", "error", "delta", "text", "content",
                                                        "finish_reason", "prompt_tokens", "completion_tokens"])
                                       | st.text(max_size=4), inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_JSON.map(json.dumps) | st.text(max_size=20), max_size=4), chat=st.booleans())
def test_any_event_payload_is_recorded_not_raised(events, chat):
    backend = OpenAIBackend(BackendConfig(kind="openai-chat" if chat else "openai",
                                          base_url="http://127.0.0.1:1"), chat)
    record = RequestRecord(index=0, prompt_len=1, output_len_requested=1)
    for payload in events:
        backend._on_event(payload, 1.0, record)
    assert all(isinstance(t, str) for t in record.text_parts)


@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_any_bytes_decode_to_events_without_error(data, cuts):
    decoder = SSEDecoder()
    start = 0
    for cut in sorted(c for c in cuts if c <= len(data)) + [len(data)]:
        assert all(isinstance(e, str) for e in decoder.feed(data[start:cut]))
        start = cut
    decoder.flush()


def test_an_endless_line_or_event_is_an_error_not_unbounded_memory():
    decoder = SSEDecoder()
    with pytest.raises(SSEError):
        for _ in range(MAX_EVENT_BYTES // 2**20 + 2):
            decoder.feed(b"x" * 2**20)
    decoder = SSEDecoder()
    with pytest.raises(SSEError):
        for _ in range(MAX_EVENT_BYTES // 2**20 + 2):
            decoder.feed(b"data: " + b"y" * 2**20 + b"\n")
