"""The forwards that CUDA graphs capture, run eagerly on CPU. Prefill graphs: tokens padded to
the bucket and sequences padded with empty ones give the real rows the eager pass's hidden
states and write exactly the eager pass's K/V (a cached prefix and a second chunk included), and
the buckets cover every prefill-only batch up to the budget. Piecewise graphs: the pieces around
eager attentions give a mixed batch (decode rows beside prefill chunks) the eager pass's hidden
states and K/V, padded to their token bucket. The batches the GPU memory profile measures are
well-formed forwards."""

from __future__ import annotations

import pytest
import torch

from services.engine.batch_inputs import TABLE_WIDTH_ALIGN, build_batch_inputs
from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.kv_cache import cdiv
from services.engine.loader import load_model
from services.engine.memory_profile import profile_batch
from services.engine.piecewise_graphs import MAX_TOKENS as PIECEWISE_MAX_TOKENS
from services.engine.piecewise_graphs import PiecewiseGraphs, piecewise_buckets
from services.engine.prefill_graphs import (MIN_TOKENS_PER_SEQ, SINGLE_STEP, PrefillGraphs,
                                            pick_bucket, prefill_buckets)
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledChunk

BLOCK = 4


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-random", device="cpu")


def test_buckets_hold_every_prefill_batch_up_to_the_budget():
    buckets = prefill_buckets(max_tokens=512, max_seqs=20)
    assert max(t for t, _ in buckets) == 512 and max(s for _, s in buckets) == 16
    assert all(s * MIN_TOKENS_PER_SEQ <= t for t, s in buckets)
    for tokens in range(2, 513, 7):
        for seqs in range(1, min(16, tokens // 2) + 1):
            bucket = pick_bucket(buckets, tokens, seqs)
            assert bucket is not None and bucket[0] >= tokens and bucket[1] >= seqs
            # the fewest tokens that hold it
            assert not any(seqs <= s and tokens <= t < bucket[0] for t, s in buckets)
    # A lone prompt pads by less than SINGLE_STEP tokens.
    assert all(pick_bucket(buckets, n, 1)[0] - n < SINGLE_STEP for n in range(2, 513))
    assert pick_bucket(buckets, 513, 1) is None          # above the budget: eager
    assert pick_bucket(buckets, 100, 17) is None         # more sequences than any bucket
    # A budget between buckets is a bucket of its own (its full chunks replay a graph).
    assert max(t for t, _ in prefill_buckets(max_tokens=96, max_seqs=4)) == 96
    assert prefill_buckets(max_tokens=8, max_seqs=4) == ((8, 1),)
    assert len(prefill_buckets(max_tokens=8192 // 8, max_seqs=256)) < 80


def _chunks(engine: LLMEngine, spans: list[tuple[str, int, int, int]]) -> tuple:
    """(owner, prompt length, first new token, new tokens) -> scheduled chunks."""
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    chunks = []
    for owner, length, start, num_new in spans:
        if not engine.kv.holds(owner, start + num_new):
            engine.kv.allocate(owner, start + num_new)
        request = Request(owner, [(7 * i + len(owner)) % 200 + 1 for i in range(length)],
                          params, 0.0)
        chunks.append(ScheduledChunk(request, start, num_new, engine.kv.block_ids(owner)))
    return tuple(chunks)


def _eager_and_padded(engine: LLMEngine, graphs: PrefillGraphs, chunks: tuple):
    """Hidden states of the real rows and the pool after the eager and after the padded pass,
    each from the same starting pool."""
    inputs = build_batch_inputs(chunks, BLOCK)
    input_ids = inputs.input_ids
    runner, kv = engine.runner, engine.kv
    start = kv.kv_cache.clone()
    eager = runner._forward(inputs, input_ids).clone()
    eager_pool = kv.kv_cache.clone()
    kv.kv_cache.copy_(start)
    bucket = pick_bucket(graphs.buckets, input_ids.shape[0], inputs.num_seqs)
    assert bucket is not None and bucket[0] > input_ids.shape[0]    # really padded
    graphs.fill(bucket, inputs, input_ids)
    padded = graphs.forward(*bucket)[:input_ids.shape[0]].clone()
    return eager, padded, eager_pool, kv.kv_cache.clone()


def test_padded_prefill_equals_the_eager_pass(loaded):
    config = EngineConfig(cache=CacheConfig(block_size=BLOCK, num_blocks=128),
                          scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8,
                                                    max_model_len=256))
    engine = LLMEngine(config, loaded)
    max_blocks = cdiv(cdiv(256, BLOCK), TABLE_WIDTH_ALIGN) * TABLE_WIDTH_ALIGN
    graphs = PrefillGraphs(engine.runner.model, engine.kv.kv_cache, 256, 8, max_blocks)
    torch.manual_seed(0)
    engine.kv.kv_cache.normal_()          # stale values wherever nothing writes
    with torch.inference_mode():
        # Three prompts at once (3 sequences pad to 4, 61 tokens to 64).
        first = _chunks(engine, [("a", 20, 0, 20), ("b", 33, 0, 33), ("c", 8, 0, 8)])
        eager, padded, eager_pool, padded_pool = _eager_and_padded(engine, graphs, first)
        torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded_pool, eager_pool, rtol=1e-5, atol=1e-5)
        engine.kv.kv_cache.copy_(eager_pool)
        # The second chunk of "b" beside a new prompt: each reads its context from the pages.
        second = _chunks(engine, [("b", 70, 33, 37), ("d", 5, 0, 5)])
        eager, padded, eager_pool, padded_pool = _eager_and_padded(engine, graphs, second)
        torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded_pool, eager_pool, rtol=1e-5, atol=1e-5)


def test_piecewise_buckets_reach_the_budget():
    assert piecewise_buckets(8192)[-1] == PIECEWISE_MAX_TOKENS
    assert piecewise_buckets(96) == (16, 32, 64, 96)
    buckets = piecewise_buckets(2048)
    assert all(b - a <= 128 for a, b in zip(buckets[3:], buckets[4:]))


def test_piecewise_forward_equals_the_eager_pass(loaded):
    config = EngineConfig(cache=CacheConfig(block_size=BLOCK, num_blocks=128),
                          scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8,
                                                    max_model_len=256))
    engine = LLMEngine(config, loaded)
    pieces = PiecewiseGraphs(engine.runner.model, engine.kv.kv_cache, 256)
    torch.manual_seed(1)
    engine.kv.kv_cache.normal_()
    runner, kv = engine.runner, engine.kv
    with torch.inference_mode():
        # Two prompts to give the decode rows a context, then a mixed batch: both decode one
        # token each beside the first chunk of a third prompt (3 + 40 tokens pad to 64).
        prompts = _chunks(engine, [("a", 30, 0, 29), ("b", 12, 0, 11)])
        first = build_batch_inputs(prompts, BLOCK)
        runner._forward(first, first.input_ids)
        mixed = _chunks(engine, [("a", 30, 29, 1), ("c", 70, 0, 40), ("b", 12, 11, 1)])
        for batch in (mixed, prompts):
            inputs = build_batch_inputs(batch, BLOCK)
            start = kv.kv_cache.clone()
            eager = runner._forward(inputs, inputs.input_ids).clone()
            eager_pool = kv.kv_cache.clone()
            kv.kv_cache.copy_(start)
            bucket = min(b for b in pieces.buckets if b >= inputs.input_ids.shape[0])
            assert bucket > inputs.input_ids.shape[0]                  # really padded
            padded = pieces.forward(bucket, inputs.input_ids, inputs.positions,
                                    runner._metadata(inputs)).clone()
            torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kv.kv_cache, eager_pool, rtol=1e-5, atol=1e-5)
        assert inputs.num_decodes == 0 and build_batch_inputs(mixed, BLOCK).num_decodes == 2


@pytest.mark.parametrize("tokens,per_seq", [(40, 40), (40, 16), (12, 1)])
def test_the_memory_profile_batches_run(loaded, tokens, per_seq):
    """The forwards memory_profile.py measures on a GPU (a prefill at the step budget in
    sequences of max_model_len, a full decode batch) are well-formed batches: on CPU they run
    through the same model and write K/V only into their own scratch pool."""
    batch = profile_batch(loaded.config, tokens, per_seq, BLOCK, torch.float32,
                          torch.device("cpu"))
    assert batch.meta.num_decodes == (tokens if per_seq == 1 else 0)
    with torch.inference_mode():
        hidden = loaded.model(batch.input_ids, batch.positions, batch.kv_cache, batch.meta)
    assert hidden.shape == (tokens, loaded.config.hidden_size) and bool(hidden.isfinite().all())
    written = batch.kv_cache.flatten(1).abs().sum(1) > 0          # per block
    assert int(written.sum()) == sum(cdiv(min(per_seq, tokens - s), BLOCK)
                                     for s in range(0, tokens, per_seq))
