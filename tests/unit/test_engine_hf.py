"""The whole engine against HF transformers `generate`, greedy, fp32, same weights: every
scheduling path (continuous batching with staggered arrivals, chunked prefill under a small
token budget, prefix-cache hits, preemption under a tiny KV pool) must give the same tokens."""

from __future__ import annotations

import pytest
import torch

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams
from tests.helpers.hf_checkpoints import load_hf_model, make_hf_checkpoint

MAX_TOKENS = 10
PROMPTS = ("a", "hello world", "The quick brown fox jumps over the lazy dog, twice.",
           "café déjà vu — 你好世界 🙂 and a rather longer tail of plain ascii text here")
SHARED = "A shared system prompt that spans several blocks of the cache. "
PREFIXED = (SHARED + "First?", SHARED + "Second, longer question?", SHARED)

SCENARIOS = {
    "together": dict(cache=CacheConfig(block_size=16, num_blocks=64)),
    "staggered": dict(cache=CacheConfig(block_size=16, num_blocks=64), stagger=True),
    "chunked": dict(cache=CacheConfig(block_size=4, num_blocks=128),
                    scheduler=SchedulerConfig(max_num_batched_tokens=7)),
    "tiny_pool": dict(cache=CacheConfig(block_size=4, num_blocks=32)),   # 30 admit, 38 to finish
    "spf": dict(cache=CacheConfig(block_size=8, num_blocks=64),
                scheduler=SchedulerConfig(policy="shortest_prompt_first", max_num_seqs=2)),
}


@pytest.fixture(scope="module", params=["llama3", "llama2", "mistral", "qwen2"])
def family(request, tmp_path_factory):
    path = make_hf_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    loaded = load_model(str(path), dtype="float32")
    hf = load_hf_model(path)
    reference = {text: hf_greedy(hf, loaded.tokenizer.encode(text)) for text in PROMPTS + PREFIXED}
    return loaded, reference


def hf_greedy(hf, ids: list[int]) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, len(ids):].tolist()


def run(loaded, texts, cache: CacheConfig, scheduler: SchedulerConfig = SchedulerConfig(),
        stagger: bool = False) -> tuple[dict[str, list[int]], LLMEngine]:
    """Run texts to completion (one new request per step when staggered), checking the cache's
    integrity after every step; returns the tokens per text and the engine."""
    engine = LLMEngine(EngineConfig(cache=cache, scheduler=scheduler), loaded)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    waiting = list(texts)
    tokens: dict[str, list[int]] = {t: [] for t in texts}
    while waiting or engine.has_unfinished_requests():
        for text in (waiting[:1] if stagger else waiting[:]):
            engine.add_request(text, loaded.tokenizer.encode(text), params)
            waiting.remove(text)
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
        engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    return tokens, engine


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_greedy_matches_hf_generate(family, scenario):
    loaded, reference = family
    tokens, engine = run(loaded, PROMPTS, **SCENARIOS[scenario])
    assert tokens == {text: reference[text] for text in PROMPTS}
    if scenario == "tiny_pool":
        assert engine.scheduler.num_preemptions > 0


def test_prefix_cache_hits_give_the_same_tokens(family):
    loaded, reference = family
    engine = LLMEngine(EngineConfig(cache=CacheConfig(block_size=8, num_blocks=64)), loaded)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    cached = {}
    for text in PREFIXED:                    # one after another, so each finds the last one's blocks
        engine.add_request(text, loaded.tokenizer.encode(text), params)
        got = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                got += out.new_token_ids
                cached[text] = out.num_cached_tokens
        engine.check_integrity()
        assert got == reference[text]
    ids = [loaded.tokenizer.encode(text) for text in PREFIXED]
    for i, text in enumerate(PREFIXED):     # every full block shared with an earlier prompt
        shared = max((common_prefix(ids[i], earlier) for earlier in ids[:i]), default=0)
        assert cached[text] == min(shared, len(ids[i]) - 1) // 8 * 8
    assert cached[PREFIXED[1]] >= 40
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
