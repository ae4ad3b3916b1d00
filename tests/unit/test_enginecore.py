"""EngineCoreClient: the engine in its own process streams what the in-process engine streams,
ends aborted streams, relays engine calls and their typed errors, shares the CPU KV pool, and
reports its process's death at once (every stream and call fails, on_exit runs), never a hang."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from services.engine.config import CacheConfig, EngineConfig
from services.engine.engine import LLMEngine
from services.engine.engine_loop import EngineStoppedError
from services.engine.errors import CapacityError, InvalidRequestError
from services.engine.sampling_params import SamplingParams
from services.enginecore.client import EngineCoreClient

pytestmark = pytest.mark.timeout(120)

CONFIG = EngineConfig(cache=CacheConfig(num_blocks=32), detokenize=False)
GREEDY = SamplingParams(temperature=0.0, max_tokens=6)


@pytest.fixture(scope="module")
def core():
    exits: list[str] = []
    client = EngineCoreClient(CONFIG, "test", on_exit=exits.append)
    client.start()
    client.exits = exits
    yield client
    client.stop()


def direct_tokens(prompt: list[int], params: SamplingParams = GREEDY) -> list[int]:
    engine = LLMEngine(CONFIG)
    engine.add_request("direct", prompt, params)
    out = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            out += o.new_token_ids
    return out


async def collect(stream) -> list[int]:
    return [t async for o in stream for t in o.new_token_ids]


async def test_concurrent_streams_match_the_in_process_engine(core) -> None:
    prompts = {f"r{i}": list(range(10 + i, 30 + i)) for i in range(4)}
    streams = {rid: await core.add_request(rid, p, GREEDY) for rid, p in prompts.items()}
    results = await asyncio.gather(*(collect(s) for s in streams.values()))
    for prompt, tokens in zip(prompts.values(), results):
        assert tokens == direct_tokens(prompt)
    assert core.num_open_streams == 0
    await core.call(core.engine.check_integrity)
    assert core.engine.prompt_counter.prompt_tokens >= sum(len(p) for p in prompts.values())
    assert core.engine.kv.num_free_blocks == core.engine.kv.num_blocks


async def test_abort_ends_the_stream_and_frees_blocks(core) -> None:
    stream = await core.add_request("long", [5] * 8, SamplingParams(temperature=0.0, max_tokens=200))
    first = await stream.__anext__()
    assert first.new_token_ids
    assert await core.abort("long") is True
    assert [o async for o in stream] == []
    assert stream.aborted
    await core.call(core.engine.check_integrity)
    assert await core.abort("long") is False


async def test_typed_errors_cross_the_process_boundary(core) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await core.add_request("bad", [], GREEDY)
    assert info.value.field == "prompt"
    assert core.num_open_streams == 0
    stream = await core.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=50))
    with pytest.raises(InvalidRequestError):
        await core.add_request("dup", [1, 2, 3], GREEDY)
    await core.abort("dup")
    [o async for o in stream]
    assert stream.aborted or stream.finished


async def test_a_request_without_room_is_refused_across_the_process_boundary(core) -> None:
    block_ids = await core.call(core.engine.reserve, "held", 20 * 16)   # 20 of the 32 blocks
    with pytest.raises(CapacityError, match="13 blocks needed, 12 free"):
        await core.add_request("big", [1, 2, 3], GREEDY, room_tokens=13 * 16)
    assert core.num_open_streams == 0
    stream = await core.add_request("fits", [1, 2, 3], GREEDY, room_tokens=12 * 16)
    assert [t async for o in stream for t in o.new_token_ids]
    await core.call(core.engine.cancel_reservation, "held")
    assert len(block_ids) == 20 and core.engine.kv.num_free_blocks == core.engine.kv.num_blocks
    await core.call(core.engine.check_integrity)


async def test_reserve_and_prefilled_pages_through_calls(core) -> None:
    block_ids = await core.call(core.engine.reserve, "res", 20)
    assert len(block_ids) == core.engine.kv.blocks_for(20)
    await core.call(core.engine.cancel_reservation, "res")
    stream = await core.add_request("pf", list(range(1, 17)), GREEDY, prefill_only=True)
    outputs = [o async for o in stream]
    assert outputs[-1].finish_reason == "prefilled"
    held, num_tokens = await core.call(core.engine.held_pages, "pf")
    assert num_tokens == 16 and len(held) == core.engine.kv.blocks_for(16)
    # The CPU pool is shared: the front end reads the pages the engine process wrote.
    assert core.engine.kv.kv_cache[held[0]].abs().sum().item() > 0
    await core.abort("pf")
    await core.call(core.engine.check_integrity)


async def test_only_engine_methods_run_remotely(core) -> None:
    with pytest.raises(TypeError):
        await core.call(print, "x")
    with pytest.raises(AttributeError):
        core.engine.step


async def test_a_killed_engine_process_fails_streams_and_calls_at_once() -> None:
    exits: list[str] = []
    client = EngineCoreClient(CONFIG, "doomed", on_exit=exits.append)
    client.start()
    try:
        stream = await client.add_request("r", [3] * 8, SamplingParams(max_tokens=500, ignore_eos=True))
        await stream.__anext__()
        os.kill(client.pid, signal.SIGKILL)
        with pytest.raises(EngineStoppedError, match="exited"):
            async for _ in stream:
                pass
        with pytest.raises(EngineStoppedError):
            await client.call(client.engine.check_integrity)
        for _ in range(100):
            if exits:
                break
            await asyncio.sleep(0.05)
        assert exits and "exit code" in exits[0]
    finally:
        client.stop()


async def test_a_resumed_stream_continues_after_its_generated_tokens(core) -> None:
    prompt = list(range(40, 60))
    full = direct_tokens(prompt)
    stream = await core.add_request("resume", prompt, GREEDY, generated_token_ids=full[:2])
    assert await collect(stream) == full[2:]
