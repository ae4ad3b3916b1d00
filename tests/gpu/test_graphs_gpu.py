"""CUDA graphs change no output: greedy and seeded tokens of a graph-replaying engine equal the
eager engine's at batch sizes that straddle a bucket edge (1, 15, 16, 17), with requests
joining and leaving mid-run (mixed steps replay pieces), and for prefill graphs at prompt lengths
around their token buckets, several prompts at once, chunked prompts and prefix-cache hits;
warm-up leaves the pool clean; the first request after warm-up compiles nothing.
`pytest -m gpu tests/gpu/test_graphs_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-random", dtype="float32", device="cuda")


def _engine(loaded, enforce_eager: bool, **scheduler) -> LLMEngine:
    engine = LLMEngine(EngineConfig(enforce_eager=enforce_eager,
                                    cache=CacheConfig(block_size=16, num_blocks=512),
                                    scheduler=SchedulerConfig(max_num_seqs=40, max_model_len=1024,
                                                              **scheduler)),
                       loaded)
    report = engine.warm_up()
    assert (report.num_graphs > 0) == (not enforce_eager)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    return engine


def _run(engine: LLMEngine, arrivals: dict[int, list[int]]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished_requests():
        for i in arrivals.get(step, []):
            prompt = [(i * 131 + j * 17) % 250 + 3 for j in range(3 + (i * 7) % 40)]
            params = (SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=4 + i % 9,
                                     ignore_eos=True) if i % 3 == 0 else
                      SamplingParams(temperature=0, max_tokens=4 + i % 11, ignore_eos=True))
            engine.add_request(f"r{i}", prompt, params)
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        step += 1
    engine.check_integrity()
    return tokens


@pytest.mark.parametrize("batch", [1, 15, 16, 17])
def test_graphs_equal_eager_at_bucket_edges(loaded, batch):
    arrivals = {0: list(range(batch))}
    graphed = _engine(loaded, enforce_eager=False)
    assert _run(graphed, arrivals) == _run(_engine(loaded, enforce_eager=True), arrivals)
    assert graphed.runner.num_graph_steps > 0


def test_graphs_equal_eager_with_requests_joining_and_leaving(loaded):
    arrivals = {0: [0, 1, 2], 2: list(range(3, 12)), 5: list(range(12, 30)), 9: [30, 31], 14: [32]}
    graphed = _engine(loaded, enforce_eager=False)
    assert _run(graphed, arrivals) == _run(_engine(loaded, enforce_eager=True), arrivals)
    runner = graphed.runner
    # Decode steps replay their graphs; steps that mix decodes with new prompts replay pieces.
    assert runner.num_graph_steps > 0 and runner.num_piecewise_steps > 0


def _prompts(engine: LLMEngine, lengths: list[int], rounds: int = 2) -> list[list[int]]:
    """Greedy tokens of prompts of the given lengths, all added at once, the same prompts again
    in a second round (their full pages then come from the prefix cache)."""
    tokens = []
    for round_ in range(rounds):
        for i, length in enumerate(lengths):
            prompt = [(i * 131 + j * 17) % 250 + 3 for j in range(length)]
            engine.add_request(f"p{round_}-{i}", prompt,
                               SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
        outputs: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
        tokens += [outputs[f"p{round_}-{i}"] for i in range(len(lengths))]
    engine.check_integrity()
    return tokens


@pytest.mark.parametrize("lengths", [[15], [16], [17], [127, 128, 129], [1000], [40] * 9,
                                     [300] * 5, [900] * 3])
def test_prefill_graphs_equal_eager(loaded, lengths):
    """[300] * 5: 1,500 tokens, past the prefill graphs, in pieces; [900] * 3: 2,700 tokens,
    past the pieces too, eager; either way the decodes after them replay graphs."""
    graphed = _engine(loaded, enforce_eager=False)
    assert _prompts(graphed, lengths) == _prompts(_engine(loaded, enforce_eager=True), lengths)
    runner = graphed.runner
    total = sum(lengths)
    assert runner.num_prefill_graph_steps > 0 or total > 1024
    assert runner.num_piecewise_steps > 0 or total <= 1024 or total > 2048
    assert runner.num_eager_steps > 0 or total <= 2048


def test_prefill_graphs_equal_eager_for_chunked_prompts(loaded):
    lengths = [250, 90, 33]
    graphed = _engine(loaded, enforce_eager=False, max_num_batched_tokens=96)
    eager = _engine(loaded, enforce_eager=True, max_num_batched_tokens=96)
    assert _prompts(graphed, lengths) == _prompts(eager, lengths)
    assert graphed.runner.num_prefill_graph_steps >= 3


def test_first_request_after_warm_up_compiles_nothing(loaded):
    import triton

    engine = _engine(loaded, enforce_eager=False)
    knobs = getattr(triton, "knobs", None)
    if knobs is None:
        pytest.skip("this triton has no compile hook")
    compiled = []
    previous = knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_post_compile_hook = lambda *args, **kwargs: compiled.append(kwargs.get("repr"))
    try:
        _run(engine, {0: [0, 1, 2, 3, 4], 1: [5, 6, 7], 3: list(range(8, 20))})
    finally:
        knobs.runtime.jit_post_compile_hook = previous
    assert compiled == []
