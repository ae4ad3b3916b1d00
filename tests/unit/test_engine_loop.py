"""EngineLoop: steps a real engine in its own thread only while there is work, hands each request
its outputs in order, ends aborted streams, and survives a failing step."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.engine.config import CacheConfig, EngineConfig
from services.engine.engine import LLMEngine
from services.engine.engine_loop import EngineLoop, EngineStoppedError
from services.engine.errors import InvalidRequestError
from services.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.timeout(30)

GREEDY = SamplingParams(temperature=0.0, max_tokens=5)


@pytest.fixture
def loop():
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=32)))
    loop = EngineLoop(engine, "test")
    loop.start()
    yield loop
    loop.stop()
    engine.check_integrity()


def direct_tokens(loop: EngineLoop, prompt: list[int]) -> list[int]:
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=32)))
    engine.add_request("direct", prompt, GREEDY)
    out = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            out += o.new_token_ids
    return out


async def collect(stream) -> list[int]:
    return [t async for o in stream for t in o.new_token_ids]


async def test_concurrent_streams_get_their_own_tokens_in_order(loop) -> None:
    prompts = {f"r{i}": list(range(10 + i, 30 + i)) for i in range(4)}
    streams = {rid: await loop.add_request(rid, p, GREEDY) for rid, p in prompts.items()}
    results = await asyncio.gather(*(collect(s) for s in streams.values()))
    for (rid, prompt), tokens in zip(prompts.items(), results):
        assert tokens == direct_tokens(loop, prompt)
    assert loop.num_open_streams == 0


async def test_an_abort_whose_caller_is_cancelled_still_frees_the_request(loop) -> None:
    kv = loop.engine.kv
    stream = await loop.add_request("held", list(range(1, 40)), GREEDY, prefill_only=True)
    assert [o.finish_reason async for o in stream] == ["prefilled"]
    assert kv.num_free_blocks < kv.num_blocks           # a prefilled request keeps its pages
    busy, release = threading.Event(), threading.Event()
    loop.submit(lambda: (busy.set(), release.wait(10)))  # the engine thread is busy a while
    assert await asyncio.to_thread(busy.wait, 10)
    aborting = asyncio.create_task(loop.abort("held"))
    await asyncio.sleep(0.05)
    aborting.cancel()                                   # the caller goes away before it ran
    with pytest.raises(asyncio.CancelledError):
        await aborting
    release.set()
    assert await loop.call(lambda: kv.num_free_blocks) == kv.num_blocks


async def test_an_idle_loop_sleeps_instead_of_stepping(loop) -> None:
    await collect(await loop.add_request("once", [1, 2, 3], GREEDY))
    steps = loop.num_steps
    await asyncio.sleep(0.2)
    assert loop.num_steps == steps
    thread = next(t for t in threading.enumerate() if t.name == "test-loop")
    assert thread.is_alive()


async def test_abort_ends_the_stream_and_frees_the_request(loop) -> None:
    stream = await loop.add_request("long", [5] * 20, SamplingParams(temperature=0.0, max_tokens=400,
                                                                     ignore_eos=True))
    first = await stream.__anext__()
    assert first.new_token_ids
    assert await loop.abort("long")
    rest = [o async for o in stream]
    assert stream.aborted and len(rest) < 400
    assert await loop.call(lambda: loop.engine.kv.num_free_blocks) == loop.engine.kv.num_blocks


async def test_bad_requests_raise_for_the_caller_only(loop) -> None:
    with pytest.raises(InvalidRequestError, match="prompt"):
        await loop.add_request("empty", [], GREEDY)
    await loop.add_request("dup", [1, 2], GREEDY)
    with pytest.raises(InvalidRequestError, match="request_id"):
        await loop.add_request("dup", [1, 2], GREEDY)
    assert await collect(await loop.add_request("after", [4, 5, 6], GREEDY))


async def test_a_failing_step_fails_its_streams_and_the_loop_goes_on(loop) -> None:
    real_step = loop.engine.step
    calls = {"n": 0}

    def failing_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return real_step()

    loop.engine.step = failing_once
    stream = await loop.add_request("doomed", [7, 8, 9], GREEDY)
    with pytest.raises(EngineStoppedError, match="device lost"):
        await collect(stream)
    assert await collect(await loop.add_request("next", [7, 8, 9], GREEDY)) == direct_tokens(loop, [7, 8, 9])


async def test_stop_ends_open_streams(loop) -> None:
    stream = await loop.add_request("cut", [3] * 10, SamplingParams(temperature=0.0, max_tokens=400,
                                                                    ignore_eos=True))
    await stream.__anext__()
    await asyncio.to_thread(loop.stop)
    with pytest.raises(EngineStoppedError):
        await collect(stream)
    with pytest.raises(EngineStoppedError):
        await loop.call(lambda: None)
    loop.engine.abort("cut")        # the engine itself is still usable after its loop stopped
