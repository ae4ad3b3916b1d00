"""The engine keeps one batch in flight (the next is scheduled and queued before the current one
is waited for): its outputs equal a loop that waits for every batch, through preemption, stop
ids seen only at commit, seeded sampling, logprobs and aborts; nothing leaks."""

from __future__ import annotations

import pytest

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.loader import load_model
from services.engine.request import PENDING_TOKEN
from services.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-random")


def _engine(loaded, num_blocks: int = 48) -> LLMEngine:
    return LLMEngine(EngineConfig(cache=CacheConfig(block_size=4, num_blocks=num_blocks),
                                  scheduler=SchedulerConfig(max_num_batched_tokens=20, max_num_seqs=6)),
                     loaded)


def _add(engine: LLMEngine, i: int, stop_token: int | None = None) -> None:
    prompt = [(i * 53 + j * 13) % 300 + 1 for j in range(4 + 5 * (i % 4))]
    kinds = (dict(temperature=0), dict(temperature=0.9, top_p=0.8, seed=i),
             dict(temperature=0, logprobs=2), dict(temperature=0.7, top_k=20, seed=100 + i))
    stop = (stop_token,) if stop_token is not None else ()
    engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=5 + i % 6, ignore_eos=True,
                                                       stop_token_ids=stop, **kinds[i % 4]))


def _pipelined(engine: LLMEngine, arrivals: dict[int, list[int]], stops: dict[int, int]) -> dict:
    outs: dict[str, list] = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished_requests():
        for i in arrivals.get(step, []):
            _add(engine, i, stops.get(i))
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
        engine.check_integrity()
        step += 1
    return outs


def _waiting(engine: LLMEngine, arrivals: dict[int, list[int]], stops: dict[int, int]) -> dict:
    """The reference: every batch waited for before the next is scheduled."""
    outs: dict[str, list] = {}
    step = 0
    while step <= max(arrivals) or engine.scheduler.has_unfinished():
        for i in arrivals.get(step, []):
            _add(engine, i, stops.get(i))
        batch = engine.scheduler.schedule()
        if batch.chunks:
            result = engine.runner.run(batch)
            slots = engine.scheduler.advance(batch)
            for j in engine.scheduler.commit(batch, slots, result.token_ids):
                out = engine.outputs.output(slots[j].request, result.token_ids[j], result.logprobs[j])
                outs.setdefault(out.request_id, []).append(out)
        step += 1
    return outs


def _tokens(outs: dict) -> dict[str, list[int]]:
    return {rid: [t for o in seq for t in o.new_token_ids] for rid, seq in outs.items()}


def test_pipelined_outputs_equal_the_waiting_loop_through_preemption_and_stops(loaded):
    arrivals = {0: [0, 1, 2], 1: [3], 3: [4, 5, 6], 6: [7, 8], 9: [9]}
    free = _tokens(_waiting(_engine(loaded), arrivals, {}))
    # Stop ids the commit sees: the third token of some greedy requests, so the row queued
    # behind it has run one step too many and must be dropped.
    stops = {i: free[f"r{i}"][2] for i in (0, 2, 4) if len(free[f"r{i}"]) > 3}
    for num_blocks in (48, 14):                 # 14 blocks: requests get preempted
        reference = _engine(loaded, num_blocks)
        expected = _waiting(reference, arrivals, stops)
        engine = _engine(loaded, num_blocks)
        got = _pipelined(engine, arrivals, stops)
        assert _tokens(got) == _tokens(expected)
        # Requests join a batch later when one is queued ahead, so batches (and float sums) differ.
        for rid, seq in got.items():
            for ours, theirs in zip(seq, expected[rid]):
                assert (ours.logprobs is None) == (theirs.logprobs is None)
                for a, b in zip(ours.logprobs or (), theirs.logprobs or ()):
                    assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
                    assert [t for t, _ in a.top] == [t for t, _ in b.top]
        for i, token in stops.items():
            assert _tokens(got)[f"r{i}"][-1] == token and got[f"r{i}"][-1].finish_reason == "stop"
        assert engine.kv.num_free_blocks == engine.kv.num_blocks
        assert not engine._requests
    assert reference.scheduler.num_preemptions > 0 and engine.scheduler.num_preemptions > 0


def test_abort_of_a_request_in_flight_frees_it_and_streams_no_more(loaded):
    engine = _engine(loaded)
    _add(engine, 0)
    _add(engine, 1)
    first = engine.step()                       # r0, r1 prefilled; their decodes are queued
    assert {o.request_id for o in first} == {"r0", "r1"}
    assert any(t == PENDING_TOKEN for t in engine.scheduler.running[0].output_token_ids)
    assert engine.abort("r0")
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
        engine.check_integrity()
    r0 = [o for o in outs if o.request_id == "r0"]
    assert len(r0) == 1 and r0[0].finish_reason == "abort" and r0[0].new_token_ids == ()
    assert sum(len(o.new_token_ids) for o in outs if o.request_id == "r1") == 6 - 1
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
