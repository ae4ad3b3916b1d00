"""Warm-up and the decode-first batch layout on CPU: the synthetic batches, the short requests
and the burst through the step loop leave the pool free and change no output; a mixed batch's results come back in batch order; graph buckets cover
every batch size and table width."""

from __future__ import annotations

import pytest

from services.engine.batch_inputs import TABLE_WIDTH_ALIGN, build_batch_inputs
from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.cuda_graphs import batch_buckets, bucket_for, width_buckets
from services.engine.engine import LLMEngine
from services.engine.errors import InvalidRequestError
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams
from services.engine.warmup import (burst_through_the_step_loop, generate_through_the_step_loop,
                                    run_synthetic_batches)


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-random", device="cpu")


def _generate(engine: LLMEngine, arrivals: dict[int, list[int]]) -> dict[str, list[int]]:
    """Requests join at the step given by their key (staggered, so batches mix decodes and
    prefills); returns every request's tokens."""
    tokens: dict[str, list[int]] = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished_requests():
        for i in arrivals.get(step, []):
            prompt = [(i * 37 + j * 11) % 300 + 1 for j in range(5 + 9 * i)]
            engine.add_request(f"r{i}", prompt, SamplingParams(temperature=0.7, seed=i,
                                                               max_tokens=6 + i, ignore_eos=True))
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        step += 1
    engine.check_integrity()
    return tokens


def test_synthetic_batches_leave_the_pool_and_the_outputs_unchanged(loaded):
    config = EngineConfig(cache=CacheConfig(block_size=4, num_blocks=96),
                          scheduler=SchedulerConfig(max_num_batched_tokens=24, max_num_seqs=20))
    arrivals = {0: [0, 1], 2: [2], 3: [3, 4], 7: [5]}
    expected = _generate(LLMEngine(config, loaded), arrivals)

    warmed = LLMEngine(config, loaded)
    assert run_synthetic_batches(warmed) >= 5
    assert generate_through_the_step_loop(warmed) >= 3
    # The burst: as many prompts at once as the 20 sequence slots take (the pool holds 24).
    assert burst_through_the_step_loop(warmed) == 20
    assert not warmed.has_unfinished_requests() and not warmed._requests
    assert warmed.kv.num_free_blocks == warmed.kv.num_blocks
    warmed.check_integrity()
    assert warmed.warm_up().seconds == 0.0        # nothing to compile on CPU
    assert _generate(warmed, arrivals) == expected


def test_warm_up_refuses_an_engine_with_requests(loaded):
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=16)), loaded)
    engine.add_request("r", [1, 2, 3], SamplingParams(max_tokens=2))
    with pytest.raises(InvalidRequestError, match="before the first request"):
        engine.warm_up()


def test_mixed_batch_puts_decodes_first_and_results_return_in_batch_order(loaded):
    engine = LLMEngine(EngineConfig(cache=CacheConfig(block_size=4, num_blocks=64),
                                    scheduler=SchedulerConfig(max_num_batched_tokens=64)), loaded)
    engine.add_request("a", list(range(1, 9)), SamplingParams(max_tokens=5, ignore_eos=True))
    first = engine.scheduler.schedule()                     # a: prefilled, decodes next
    engine.scheduler.update(first, engine.runner.run(first).token_ids)
    engine.add_request("b", list(range(20, 31)), SamplingParams(max_tokens=5, ignore_eos=True))
    engine.add_request("c", [5, 6], SamplingParams(max_tokens=5, ignore_eos=True))
    batch = engine.scheduler.schedule()
    assert [c.request.request_id for c in batch.chunks] == ["a", "b", "c"]
    inputs = build_batch_inputs(batch.chunks, engine.kv.block_size)
    assert inputs.num_decodes == 1 and inputs.order == (0, 1, 2)
    assert inputs.block_tables.shape[1] % TABLE_WIDTH_ALIGN == 0
    assert inputs.positions.tolist() == [8] + list(range(11)) + [0, 1]
    assert inputs.sample_indices.tolist() == [0, 11, 13]
    result = engine.runner.run(batch)
    assert len(result.token_ids) == 3

    # A decode behind two prefills is moved to the front; its token comes back in its place.
    chunks = (batch.chunks[1], batch.chunks[2], batch.chunks[0])
    moved = build_batch_inputs(chunks, engine.kv.block_size)
    assert moved.order == (2, 0, 1) and moved.num_decodes == 1


def test_graph_buckets_cover_every_batch_and_width():
    assert batch_buckets(256)[:6] == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(256)[-1] == 256
    assert batch_buckets(5) == (1, 2, 4, 5)
    assert batch_buckets(1) == (1,)
    for max_seqs in (1, 3, 17, 100, 256):
        buckets = batch_buckets(max_seqs)
        assert all(bucket_for(n, buckets) >= n for n in range(1, max_seqs + 1))
        assert bucket_for(max_seqs + 1, buckets) is None
    assert width_buckets(256, 16) == (256,)
    assert width_buckets(8192, 16) == (256, 1024, 4096, 8192)
    assert width_buckets(16, 16) == (16,)
