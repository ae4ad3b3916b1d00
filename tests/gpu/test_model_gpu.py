"""The model on a CUDA device: the same checkpoints and presets as the CPU tests, through the
Triton kernels, against CPU fp32 and transformers."""

from __future__ import annotations

import pytest
import torch

from services.engine.loader import load_model
from tests.helpers.hf_checkpoints import FAMILIES, load_hf_model, make_hf_checkpoint
from tests.helpers.paged_batch import PagedHarness, PagedSequence, build_batch

pytestmark = pytest.mark.gpu

PROMPT = "hello the world, 你好世界 🙂 and some more text to make a longer prompt " * 3


def chunked_logits(loaded, ids: list[int], block_size: int = 16) -> torch.Tensor:
    """Prefill in two chunks, then decode the rest token by token."""
    harness = PagedHarness(loaded.model, loaded.config, block_size=block_size, num_blocks=128)
    seq = PagedSequence(ids)
    out = [harness.step([(seq, 20)]), harness.step([(seq, 17)])]
    while seq.num_computed < len(ids):
        out.append(harness.step([(seq, 1)]))
    return torch.cat(out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_checkpoint_on_cuda_matches_transformers(tmp_path, family):
    path = make_hf_checkpoint(tmp_path, family)
    ours = load_model(str(path), dtype="float32", device="cuda")
    ids = ours.tokenizer.encode(PROMPT)
    with torch.no_grad():
        expected = load_hf_model(path)(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(chunked_logits(ours, ids).cpu(), expected, atol=2e-3, rtol=0)


def test_tiny_random_bf16_on_cuda_tracks_cpu_fp32():
    cpu, gpu = load_model("tiny-random"), load_model("tiny-random", device="cuda")
    assert gpu.config.dtype == "bfloat16"
    ids = cpu.tokenizer.encode(PROMPT)
    torch.testing.assert_close(chunked_logits(gpu, ids).cpu(), chunked_logits(cpu, ids),
                               atol=0.1, rtol=0)


def test_llama_31_8b_random_runs_on_cuda():
    loaded = load_model("llama-3.1-8b-random", device="cuda")
    params = list(loaded.model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert {p.device.type for p in params} == {"cuda"}
    assert sum(p.numel() for p in params) == 8_030_261_248
    ids = torch.randint(0, 128256, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    logits = chunked_logits(loaded, ids)
    assert logits.shape == (64, 128256) and torch.isfinite(logits).all()


def test_decode_forward_replays_in_a_cuda_graph():
    """The forward has no host synchronisation: a captured decode step replays with new tokens."""
    loaded = load_model("tiny-random", device="cuda")
    model, tok = loaded.model, loaded.tokenizer
    harness = PagedHarness(model, loaded.config, block_size=16, num_blocks=64)
    seqs = [PagedSequence(tok.encode(p)) for p in ("hello the world", "你好世界 🙂", "a b c d e f")]
    harness.step([(s, len(s.token_ids) - 1) for s in seqs])
    input_ids, positions, meta = build_batch([(s, 1) for s in seqs], 16, "cuda")

    def forward() -> torch.Tensor:
        return model.compute_logits(model(input_ids, positions, harness.kv_cache, meta))

    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = forward()
        for new_tokens in ([5, 17, 250], [318, 99, 3]):
            input_ids.copy_(torch.tensor(new_tokens))
            graph.replay()
            torch.testing.assert_close(captured, forward(), atol=0, rtol=0)
