"""The engine on a CUDA device, eager and with every CUDA graph on: greedy parity with HF
generate (fp32, Triton kernels) through chunked prefill and preemption, seeded sampling
independent of the batch, the prefill -> decode hand-off between two engines; the 8B-shaped
preset end to end, and its memory within its share. `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import pytest
import torch

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams
from tests.helpers.hf_checkpoints import load_hf_model, make_hf_checkpoint

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPTS = ("a", "hello world", "The quick brown fox jumps over the lazy dog, twice.",
           "café déjà vu — 你好世界 🙂 and a rather longer tail of plain ascii text here")


def drain(engine: LLMEngine, holds_pages: bool = False) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        engine.check_integrity()
    assert (engine.kv.num_free_blocks < engine.kv.num_blocks) == holds_pages
    return tokens


def ready(engine: LLMEngine, graphs: bool) -> LLMEngine:
    """With graphs: warmed up, so every step kind replays its CUDA graphs (decode, prefill,
    pieces); without: every step eager."""
    if graphs:
        assert engine.warm_up().num_graphs > 0
    return engine


@pytest.mark.parametrize("graphs", [False, True])
def test_greedy_matches_hf_on_gpu_through_chunks_and_preemption(tmp_path, graphs):
    path = make_hf_checkpoint(tmp_path, "llama3")
    loaded = load_model(str(path), dtype="float32", device="cuda")
    hf = load_hf_model(path).cuda()
    expected = {}
    for text in PROMPTS:
        ids = loaded.tokenizer.encode(text)
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids], device="cuda"), max_new_tokens=10, do_sample=False,
                              attention_mask=torch.ones(1, len(ids), dtype=torch.long, device="cuda"))
        expected[text] = out[0, len(ids):].tolist()
    for cache, scheduler in ((CacheConfig(block_size=16, num_blocks=64), SchedulerConfig()),
                             (CacheConfig(block_size=4, num_blocks=32),
                              SchedulerConfig(max_num_batched_tokens=7))):
        engine = ready(LLMEngine(EngineConfig(cache=cache, scheduler=scheduler), loaded), graphs)
        for text in PROMPTS:
            engine.add_request(text, loaded.tokenizer.encode(text),
                               SamplingParams(temperature=0, max_tokens=10))
        assert drain(engine) == expected


@pytest.mark.parametrize("graphs", [False, True])
def test_seeded_sampling_and_hand_off_on_gpu(graphs):
    loaded = load_model("tiny-random", device="cuda")
    ids = loaded.tokenizer.encode("Disaggregated serving moves the KV cache as pages.")
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, seed=3, max_tokens=12,
                            ignore_eos=True)
    config = EngineConfig(cache=CacheConfig(block_size=16, num_blocks=64))
    alone = LLMEngine(config, loaded)
    alone.add_request("r", ids, params)
    expected = drain(alone)["r"]        # eager: the reference either way

    busy = ready(LLMEngine(config, loaded), graphs)
    busy.add_request("other", ids[::-1], SamplingParams(max_tokens=20, ignore_eos=True))
    busy.add_request("r", ids, params)
    assert drain(busy)["r"] == expected

    prefill = ready(LLMEngine(config, loaded), graphs)
    decode = ready(LLMEngine(config, loaded), graphs)
    prefill.add_request("r", ids, params, prefill_only=True)
    first = drain(prefill, holds_pages=True)["r"]
    blocks, num_tokens = prefill.held_pages("r")
    reserved = decode.reserve("r", num_tokens + params.max_tokens)
    decode.kv.kv_cache[reserved[:len(blocks)]] = prefill.kv.kv_cache[blocks]
    prefill.release("r")
    prefill.check_integrity()
    assert prefill.kv.num_free_blocks == prefill.kv.num_blocks
    decode.add_prefilled_request("r", ids, first, params)
    assert first + drain(decode)["r"] == expected


def test_llama_8b_shaped_preset_runs_a_batch():
    engine = LLMEngine(EngineConfig(model="llama-3.1-8b-random", device="cuda",
                                    cache=CacheConfig(num_blocks=512)))
    assert engine.model_config.num_layers == 32 and engine.kv.kv_cache.dtype == torch.bfloat16
    for i in range(8):
        engine.add_request(f"r{i}", list(range(1, 100 + 37 * i)),
                           SamplingParams(temperature=0.7, seed=i, max_tokens=8, ignore_eos=True))
    tokens = drain(engine)
    assert all(len(t) == 8 for t in tokens.values()) and len(tokens) == 8


def test_an_8b_engine_stays_within_its_memory_share():
    """Weights, KV pool, activations and every CUDA graph pool together stay inside the
    configured fraction of the card, through warm-up and a load of the largest steps (prompts
    filling the step budget beside decodes, top-p and logprobs): the pool is sized after the
    steps' own allocations were measured (memory_profile.py)."""
    import gc
    fraction = 0.3
    total = torch.cuda.mem_get_info(0)[1]
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    engine = LLMEngine(EngineConfig(model="llama-3.1-8b-random", device="cuda",
                                    cache=CacheConfig(gpu_memory_fraction=fraction),
                                    scheduler=SchedulerConfig(max_model_len=4096)))
    engine.warm_up()
    params = SamplingParams(temperature=0.8, top_p=0.9, logprobs=5, max_tokens=16,
                            ignore_eos=True)
    for i in range(40):
        engine.add_request(f"r{i}", [1 + (i * 7 + j) % 1000 for j in range(300 + 67 * i)], params)
    assert len(drain(engine)) == 40
    # What was handed out; the allocator's cache of freed blocks (max_memory_reserved) may run
    # above it, and is given back to this process's own allocations when they need it.
    peak, cached = torch.cuda.max_memory_allocated(0), torch.cuda.max_memory_reserved(0)
    print(f"peak {peak / 2**30:.2f} GiB allocated, {cached / 2**30:.2f} GiB reserved, of a "
          f"{fraction * total / 2**30:.2f} GiB share; pool {engine.kv.num_blocks} blocks")
    assert peak <= fraction * total
