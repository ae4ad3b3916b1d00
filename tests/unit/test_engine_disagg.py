"""The disaggregation hooks, in one process: prefill in engine A (prefill_only), copy its pages
tensor-wise into blocks reserved in engine B, continue decoding in B. The tokens must equal a
single-engine run, greedy and seeded, and both pools must pass check_integrity."""

from __future__ import annotations

import pytest

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.errors import CapacityError, InvalidRequestError
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams

PROMPT = "Disaggregated serving moves KV caches as pages....."   # 51 characters: 52 tokens
PARAMS = {
    "greedy": SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
    "seeded": SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=12, ignore_eos=True),
}


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-random")


def engine(loaded, num_blocks: int, budget: int = 2048) -> LLMEngine:
    return LLMEngine(EngineConfig(cache=CacheConfig(block_size=8, num_blocks=num_blocks),
                                  scheduler=SchedulerConfig(max_num_batched_tokens=budget)), loaded)


def run(eng: LLMEngine, request_id: str) -> tuple[list[int], str | None]:
    got, reason = [], None
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.request_id == request_id:
                got += out.new_token_ids
                reason = out.finish_reason
        eng.check_integrity()
    return got, reason


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_prefill_here_decode_there_equals_one_engine(loaded, kind):
    params = PARAMS[kind]
    ids = loaded.tokenizer.encode(PROMPT)
    single = engine(loaded, 64)
    single.add_request("r", ids, params)
    expected, _ = run(single, "r")

    prefill = engine(loaded, 32, budget=16)          # chunked prefill on this side
    decode = engine(loaded, 48)
    decode.add_request("busy", ids[5:], SamplingParams(max_tokens=30, ignore_eos=True))
    decode.step()                                    # so the reserved blocks are not the first ones

    prefill.add_request("r", ids, params, prefill_only=True)
    first, reason = run(prefill, "r")
    assert reason == "prefilled" and len(first) == 1
    blocks, num_tokens = prefill.held_pages("r")
    assert num_tokens == len(ids) and len(blocks) == -(-len(ids) // 8)
    prefill.check_integrity()

    reserved = decode.reserve("r", num_tokens + params.max_tokens)
    assert reserved is not None and reserved[0] != blocks[0]
    decode.kv.kv_cache[reserved[:len(blocks)]] = prefill.kv.kv_cache[blocks]   # the transfer
    prefill.release("r")
    prefill.release("r")                             # idempotent
    prefill.check_integrity()
    assert prefill.kv.num_free_blocks == prefill.kv.num_blocks

    decode.add_prefilled_request("r", ids, first, params)
    rest, reason = run(decode, "r")
    assert first + rest == expected and reason == "length"
    assert decode.kv.num_free_blocks == decode.kv.num_blocks


def test_decode_side_preemption_recomputes_and_still_matches(loaded):
    params = PARAMS["seeded"]
    ids = loaded.tokenizer.encode(PROMPT)
    single = engine(loaded, 64)
    single.add_request("r", ids, params)
    expected, _ = run(single, "r")

    prefill = engine(loaded, 32)
    prefill.add_request("r", ids, params, prefill_only=True)
    first, _ = run(prefill, "r")
    blocks, num_tokens = prefill.held_pages("r")

    # 14 blocks: "big" (6 blocks, growing to 9) and "r" (7, growing to 8) start together but
    # cannot both finish; "r" joined last, so it is the one preempted and recomputed.
    decode = engine(loaded, 14)
    decode.add_request("big", ids[::-1][:46], SamplingParams(max_tokens=20, ignore_eos=True))
    decode.step()
    reserved = decode.reserve("r", num_tokens)
    decode.kv.kv_cache[reserved] = prefill.kv.kv_cache[blocks]
    prefill.release("r")
    decode.add_prefilled_request("r", ids, first, params)
    rest, _ = run(decode, "r")
    assert decode.scheduler.num_preemptions > 0
    assert first + rest == expected


def test_reservations_and_held_pages_are_freed_on_every_path(loaded):
    eng = engine(loaded, 8)
    assert len(eng.reserve("a", 20)) == 3 and eng.kv.num_free_blocks == 5
    assert eng.reserve("big", 48) is None                        # 6 blocks, 5 free
    eng.check_integrity()
    with pytest.raises(InvalidRequestError, match="already in use"):
        eng.reserve("a", 4)
    eng.cancel_reservation("a")
    eng.cancel_reservation("a")
    assert eng.kv.num_free_blocks == 8
    eng.reserve("b", 4)
    assert eng.abort("b") and eng.kv.num_free_blocks == 8

    ids = loaded.tokenizer.encode(PROMPT)[:20]
    eng.add_request("p", ids, SamplingParams(max_tokens=4, ignore_eos=True), prefill_only=True)
    run(eng, "p")
    assert eng.held_pages("p")[1] == 20 and not eng.has_unfinished_requests()
    assert eng.abort("p") and eng.kv.num_free_blocks == 8
    eng.check_integrity()


def test_a_request_with_room_tokens_joins_only_if_the_pool_holds_them_now(loaded):
    eng = engine(loaded, 8)                                      # 8 blocks of 8 tokens
    ids = loaded.tokenizer.encode(PROMPT)[:20]
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    eng.reserve("held", 24)                                      # 3 blocks taken, 5 free
    with pytest.raises(CapacityError, match="6 blocks needed, 5 free"):
        eng.add_request("big", ids, params, room_tokens=48)
    assert not eng.has_unfinished_requests() and eng.kv.num_free_blocks == 5
    eng.add_request("big", ids, params, room_tokens=40)          # 5 blocks: fits
    with pytest.raises(InvalidRequestError) as err:
        eng.add_request("x", ids, params, room_tokens=eng.max_model_len + 1)
    assert err.value.field == "room_tokens"
    got, reason = run(eng, "big")
    assert len(got) == 4 and reason == "length"
    eng.cancel_reservation("held")
    assert eng.kv.num_free_blocks == 8
    eng.check_integrity()


def test_hook_misuse_raises_typed_errors(loaded):
    eng = engine(loaded, 8)
    ids = loaded.tokenizer.encode(PROMPT)[:10]
    with pytest.raises(InvalidRequestError, match="not a prefilled request"):
        eng.held_pages("nope")
    with pytest.raises(InvalidRequestError, match="no reservation"):
        eng.add_prefilled_request("nope", ids, [1], SamplingParams())
    eng.reserve("r", 4)
    with pytest.raises(InvalidRequestError, match="do not fit"):
        eng.add_prefilled_request("r", ids, [1], SamplingParams())
    with pytest.raises(InvalidRequestError) as err:
        eng.add_prefilled_request("r", ids[:3], [1, 2], SamplingParams(max_tokens=2))
    assert err.value.field == "generated_token_ids"
    with pytest.raises(InvalidRequestError) as err:
        eng.reserve("x", 0)
    assert err.value.field == "num_tokens"


def test_prefill_only_request_that_is_already_done_does_not_hold(loaded):
    eng = engine(loaded, 16)
    ids = loaded.tokenizer.encode(PROMPT)[:12]
    eng.add_request("one", ids, SamplingParams(max_tokens=1), prefill_only=True)
    _, reason = run(eng, "one")
    assert reason == "length" and eng.kv.num_free_blocks == eng.kv.num_blocks
    with pytest.raises(InvalidRequestError):
        eng.held_pages("one")


@pytest.mark.parametrize("kind", sorted(PARAMS))
@pytest.mark.parametrize("cut", [1, 5, 11])
def test_request_resumed_from_streamed_tokens_continues_the_same_stream(loaded, kind, cut):
    """A colocated worker that died mid-stream: another engine gets the prompt and the tokens
    already streamed, computes them again and continues; greedy and seeded outputs equal the
    unbroken run (no token lost, none repeated)."""
    params = PARAMS[kind]
    ids = loaded.tokenizer.encode(PROMPT)
    single = engine(loaded, 64)
    single.add_request("r", ids, params)
    expected, _ = run(single, "r")

    other = engine(loaded, 48, budget=16)            # chunked: the recompute spans several steps
    other.add_request("busy", ids[3:], SamplingParams(max_tokens=20, ignore_eos=True))
    other.add_request("r", ids, params, generated_token_ids=expected[:cut])
    rest, reason = run(other, "r")
    assert expected[:cut] + rest == expected and reason == "length"
    assert other.kv.num_free_blocks == other.kv.num_blocks


def test_resumed_request_misuse_is_refused_by_field(loaded):
    eng = engine(loaded, 32)
    ids = loaded.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=4)
    for generated, prefill_only in (([1, 2, 3, 4], False), ([10**6], False), ([1], True)):
        with pytest.raises(InvalidRequestError) as info:
            eng.add_request("r", ids, params, generated_token_ids=generated, prefill_only=prefill_only)
        assert info.value.field == "generated_token_ids"
    eng.check_integrity()
