"""Our Llama-family forward over the paged KV pool against transformers, in fp32, on tiny random
checkpoints of every supported family."""

from __future__ import annotations

import pytest
import torch

from services.engine.loader import load_model
from tests.helpers.hf_checkpoints import (FAMILIES, hf_greedy_continuation, load_hf_model,
                                         make_hf_checkpoint)
from tests.helpers.paged_batch import PagedHarness, PagedSequence

ATOL = 2e-5   # fp32; logits are O(1)
PROMPTS = ("hello the world, 你好世界 🙂 and some more text", "café déjà vu", "a")


def hf_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0].float()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf")
    return {family: make_hf_checkpoint(root, family) for family in FAMILIES}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, checkpoints):
    path = checkpoints[request.param]
    return load_model(str(path), dtype="float32"), load_hf_model(path)


def test_loaded_config_reflects_family(checkpoints):
    llama3 = load_model(str(checkpoints["llama3"])).config
    assert llama3.rope_scaling is not None and llama3.rope_scaling.factor == 4.0
    assert llama3.rope_theta == 500000.0 and llama3.num_kv_heads == 2
    qwen2 = load_model(str(checkpoints["qwen2"])).config
    assert qwen2.attention_bias and qwen2.tie_word_embeddings
    mistral = load_model(str(checkpoints["mistral"])).config
    assert (mistral.num_kv_heads, mistral.head_dim, mistral.rope_theta) == (3, 12, 1e6)
    assert load_model(str(checkpoints["llama2"])).config.rms_norm_eps == 1e-6


def test_whole_prompt_logits_match_hf(pair):
    ours, theirs = pair
    ids = ours.tokenizer.encode(PROMPTS[0])
    logits = PagedHarness(ours.model, ours.config).step([(PagedSequence(ids), len(ids))])
    assert logits.dtype == torch.float32 and logits.shape == (len(ids), ours.config.vocab_size)
    torch.testing.assert_close(logits, hf_logits(theirs, ids), atol=ATOL, rtol=0)


def test_mixed_batch_of_several_prompts_matches_hf(pair):
    ours, theirs = pair
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    harness = PagedHarness(ours.model, ours.config, block_size=4, seed=3)
    logits = harness.step([(PagedSequence(ids), len(ids)) for ids in prompts])
    for ids, got in zip(prompts, logits.split([len(p) for p in prompts])):
        torch.testing.assert_close(got, hf_logits(theirs, ids), atol=ATOL, rtol=0)


def test_chunked_prefill_then_decode_matches_hf_at_every_position(pair):
    ours, theirs = pair
    ids = ours.tokenizer.encode(PROMPTS[0])
    reference = hf_logits(theirs, ids)
    harness = PagedHarness(ours.model, ours.config, block_size=4, seed=1)
    seq = PagedSequence(ids)
    # Prefill in two chunks that end mid-block, then decode one token per step.
    first, second = 7, 6
    got = [harness.step([(seq, first)]), harness.step([(seq, second)])]
    while seq.num_computed < len(ids):
        got.append(harness.step([(seq, 1)]))
    torch.testing.assert_close(torch.cat(got), reference, atol=ATOL, rtol=0)


def test_decode_tokens_batched_with_a_prefill_chunk(pair):
    """One step holding a decode token of one sequence and a prefill chunk of another."""
    ours, theirs = pair
    a, b = (ours.tokenizer.encode(p) for p in PROMPTS[:2])
    harness = PagedHarness(ours.model, ours.config, block_size=4, seed=2)
    seq_a, seq_b = PagedSequence(a), PagedSequence(b)
    harness.step([(seq_a, len(a) - 1)])
    logits = harness.step([(seq_a, 1), (seq_b, len(b))])
    torch.testing.assert_close(logits[0], hf_logits(theirs, a)[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1:], hf_logits(theirs, b), atol=ATOL, rtol=0)


def test_greedy_continuation_matches_hf_generate(pair):
    ours, theirs = pair
    ids = ours.tokenizer.encode(PROMPTS[1])
    expected = hf_greedy_continuation(theirs, ids, 8)
    harness = PagedHarness(ours.model, ours.config, block_size=4)
    seq = PagedSequence(list(ids))
    logits = harness.step([(seq, len(ids))])[-1]
    generated = []
    for _ in range(8):
        token = int(logits.argmax())
        generated.append(token)
        seq.token_ids.append(token)
        logits = harness.step([(seq, 1)])[-1]
    assert generated == expected


def test_prefill_reads_a_prefix_shared_from_another_sequence(pair):
    """A second prompt with the same first two blocks reuses their pages (a prefix-cache hit)
    and only computes its own tail."""
    ours, theirs = pair
    block_size = 4
    shared = ours.tokenizer.encode("the cat sat on the mat")[:2 * block_size]
    first, second = shared + ours.tokenizer.encode(" and ran"), shared + ours.tokenizer.encode(" 你好")
    harness = PagedHarness(ours.model, ours.config, block_size=block_size, seed=4)
    owner = PagedSequence(first)
    harness.step([(owner, len(first))])
    hit = PagedSequence(second, num_computed=len(shared), block_ids=owner.block_ids[:2])
    logits = harness.step([(hit, len(second) - len(shared))])
    torch.testing.assert_close(logits, hf_logits(theirs, second)[len(shared):], atol=ATOL, rtol=0)
