"""A stream that fell behind its engine sends what piled up as one message: next_ready takes the
outputs already queued (never waits), leaves an abort or error for the iterator (an abort drops
what was not yet read), and merged keeps the tokens, text and logprobs in order with the last
output's finish."""

from __future__ import annotations

import asyncio

import pytest

from services.engine.engine_loop import _ABORTED, EngineStoppedError, RequestStream
from services.engine.outputs import RequestOutput, RequestTimings, TokenLogprob, merged

T = RequestTimings(0.0, 0.0, 0.0, None)


def out(ids, text, finished=False, logprobs=None) -> RequestOutput:
    return RequestOutput("r", tuple(ids), text, logprobs, finished, "length" if finished else None,
                         4, 0, T)


async def test_next_ready_takes_queued_outputs_only() -> None:
    stream = RequestStream("r", asyncio.get_running_loop())
    assert stream.next_ready() is None
    for item in (out([1], "a"), out([2], "b"), out([3], "c", finished=True)):
        stream._push(item)
    first = await stream.__anext__()
    while (later := stream.next_ready()) is not None:
        first = merged(first, later)
    assert first.new_token_ids == (1, 2, 3) and first.text_delta == "abc" and first.finished
    assert stream.finished and [o async for o in stream] == []


async def test_an_error_behind_outputs_is_still_raised() -> None:
    stream = RequestStream("r", asyncio.get_running_loop())
    for item in (out([1], "a"), out([2], "b"), EngineStoppedError("gone")):
        stream._push(item)
    assert (await stream.__anext__()).new_token_ids == (1,)
    assert stream.next_ready().new_token_ids == (2,)
    assert stream.next_ready() is None and stream.next_ready() is None
    with pytest.raises(EngineStoppedError):
        await stream.__anext__()


async def test_an_abort_drops_the_outputs_not_yet_read() -> None:
    stream = RequestStream("r", asyncio.get_running_loop())
    stream._push(out([1], "a"))
    assert (await stream.__anext__()).new_token_ids == (1,)
    for item in (out([2], "b"), out([3], "c"), _ABORTED, out([4], "d")):
        stream._push(item)
    assert stream.next_ready() is None and stream.next_ready() is None
    assert [o async for o in stream] == [] and stream.aborted


def test_merged_keeps_logprobs_in_order() -> None:
    a = out([1], "x", logprobs=(TokenLogprob(1, -0.5, ()),))
    b = out([2], "y", finished=True, logprobs=(TokenLogprob(2, -0.25, ()),))
    m = merged(a, b)
    assert [lp.token_id for lp in m.logprobs] == [1, 2] and m.finish_reason == "length"
    assert merged(out([1], "x"), out([2], "y")).logprobs is None
