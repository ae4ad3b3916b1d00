"""SSE parsing: events come out whole whatever the chunk boundaries."""

from hypothesis import given, strategies as st

from loadgen.backends.sse import SSEDecoder

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
