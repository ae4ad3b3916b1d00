"""Warm-up before a worker says it is ready: every Triton kernel compiled for the shapes it will
meet, every CUDA graph (decode, prefill, the pieces of mixed steps) captured, so no request
pays for compilation.

What decides a compilation is a kernel's compile-time constants and the few arguments Triton
specializes on (the kernels keep those few on purpose: see their `do_not_specialize` lists). So a
handful of synthetic batches reach them all: prefill chunks of 1, several and 16 sequences, up to
the step's token budget (GEMM row buckets); a mixed batch (decode rows beside a prefill); eager
decode batches; and the decode attention kernel at each partition size its launch heuristic can
choose, split and unsplit. Then the graphs are captured (CUDA only, unless eager is enforced),
and a few short requests go through the real step loop: prompts of every power of two up to the
step budget (each GEMM row count loads its cuBLAS kernels on first use) and decodes that read
their pending token on the device, so a first request meets nothing new. Last, a burst: up to 32
prompts at once, as many users send them to a fresh server, so the steps that pack several
prompts into the token budget, those that mix the first decodes into them and the decode batch
of all of them have each run once.

The synthetic batches take their blocks from the pool like any request and give them back
uncached: after warm-up the pool is exactly as before. On CPU there is nothing to compile."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

import kernels
from kernels.paged_decode_attention import decode_launch_variants
from services.engine.errors import InvalidRequestError
from services.engine.request import Request
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import ScheduledBatch, ScheduledChunk

log = logging.getLogger("tandem.engine")


@dataclass(frozen=True)
class WarmupReport:
    compile_seconds: float = 0.0
    graph_seconds: float = 0.0
    num_graphs: int = 0

    @property
    def seconds(self) -> float:
        return self.compile_seconds + self.graph_seconds


def warm_up(engine, *, capture_graphs: bool) -> WarmupReport:
    """Run before the first request; raises if the engine already holds requests."""
    if engine.has_unfinished_requests() or engine.kv.num_free_blocks != engine.kv.num_blocks:
        raise InvalidRequestError("warm_up", "must run before the first request")
    if engine.device.type != "cuda":
        return WarmupReport()
    start = time.perf_counter()
    run_synthetic_batches(engine)
    _decode_kernel_variants(engine)
    torch.cuda.synchronize(engine.device)
    compile_seconds = time.perf_counter() - start
    graph_seconds, num_graphs = 0.0, 0
    if capture_graphs:
        config = engine.scheduler.config
        graph_seconds = engine.runner.capture_graphs(config.max_num_seqs, engine.max_model_len,
                                                     config.max_num_batched_tokens)
        num_graphs = engine.runner.num_graphs
    generate_through_the_step_loop(engine)
    burst_through_the_step_loop(engine)
    torch.cuda.synchronize(engine.device)
    engine.check_integrity()
    report = WarmupReport(compile_seconds, graph_seconds, num_graphs)
    log.info("warm-up: kernels %.1f s, %d CUDA graphs %.1f s", compile_seconds, num_graphs,
             graph_seconds)
    return report


def run_synthetic_batches(engine) -> int:
    """Run the synthetic batches through the engine's runner (on any device); the pool is left
    as it was. Returns how many batches ran."""
    batches = _Batches(engine)
    shapes = _batch_shapes(engine)
    for prefill_lens, num_decodes in shapes:
        batches.run(prefill_lens, num_decodes)
    return len(shapes)


def generate_through_the_step_loop(engine) -> int:
    """Short requests through `engine.step()`, one prompt length at a time, then two at once;
    their outputs are dropped. Returns how many ran."""
    budget = engine.scheduler.config.max_num_batched_tokens
    longest = min(budget, engine.max_model_len - 4, engine.kv.num_blocks * engine.kv.block_size // 4)
    lengths = [n for n in (2 ** k for k in range(4, 16)) if n <= longest] or [max(2, longest)]
    sampled = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=1, logprobs=2,
                             max_tokens=3, ignore_eos=True)
    greedy = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    groups = [[(n, greedy)] for n in lengths] + [[(lengths[0], sampled), (lengths[-1], greedy)]]
    count = 0
    for group in groups:
        for length, params in group:
            prompt = [(count * 7919 + j * 104729) % (engine.model_config.vocab_size - 1) + 1
                      for j in range(length)]
            engine.add_request(f"warm-up/generate-{count}", prompt, params)
            count += 1
        while engine.has_unfinished_requests():
            engine.step()
    return count


BURST_REQUESTS = 32
BURST_MAX_TOKENS = 8


def burst_through_the_step_loop(engine) -> int:
    """Up to BURST_REQUESTS prompts of a quarter of the step budget each, added at once (as many
    as the sequence slots and the pool hold), each generating a few tokens; their outputs are
    dropped. Returns how many ran."""
    config = engine.scheduler.config
    length = min(config.max_num_batched_tokens // 4, engine.max_model_len - BURST_MAX_TOKENS)
    if length < 1:
        return 0
    fit = engine.kv.num_blocks // engine.kv.blocks_for(length + BURST_MAX_TOKENS)
    count = min(BURST_REQUESTS, config.max_num_seqs, fit)
    params = SamplingParams(temperature=0, max_tokens=BURST_MAX_TOKENS, ignore_eos=True)
    vocab = engine.model_config.vocab_size - 1
    for i in range(count):
        # Prompts of their own (no prefix hit between them), unlike any the loop above sent.
        prompt = [(i * 104729 + j * 7919 + 13) % vocab + 1 for j in range(length)]
        engine.add_request(f"warm-up/burst-{i}", prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
    return count


def _batch_shapes(engine) -> list[tuple[list[int], int]]:
    """(new tokens per prefill chunk, number of decode rows) of the synthetic batches, clipped to
    the step budget, the sequence slots and the pool."""
    budget = engine.scheduler.config.max_num_batched_tokens
    slots = engine.scheduler.config.max_num_seqs
    capacity = min(engine.max_model_len - 1, engine.kv.num_blocks * engine.kv.block_size // 2)
    prompt = max(2, min(budget, capacity))
    shapes = [([prompt], 0), ([prompt // 2, prompt - prompt // 2], 0), ([17], 3)]
    if slots >= 16:
        shapes.append(([max(2, min(prompt, 256) // 16)] * 16, 0))
    # Decode rows 1, 3 and 5: one per row bucket of the INT4 decode GEMM (1, <= 4, <= 16).
    shapes += [([], 1), ([], min(3, slots)), ([], min(5, slots))]
    return shapes


class _Batches:
    """Builds and runs a synthetic batch through the runner, then gives back its blocks."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, logprobs=2,
                                     max_tokens=1, ignore_eos=True)

    def run(self, prefill_lens: list[int], num_decodes: int) -> None:
        kv = self.engine.kv
        chunks, owners = [], []
        lengths = [(n, 0) for n in prefill_lens] + [(1, 16)] * num_decodes   # (new, cached)
        for index, (num_new, cached) in enumerate(lengths):
            total = num_new + cached
            if not kv.can_allocate(f"warm-up/{index}", total):
                break
            owner = f"warm-up/{index}"
            kv.allocate(owner, total)
            owners.append(owner)
            request = Request(owner, [1 + (i % 7) for i in range(total)], self.params, 0.0)
            chunks.append(ScheduledChunk(request, cached, num_new, kv.block_ids(owner)))
        try:
            if chunks:
                self.engine.runner.run(ScheduledBatch(tuple(chunks)))
        finally:
            for owner in owners:
                kv.free(owner)


def _decode_kernel_variants(engine) -> None:
    """The decode attention kernel in each variant `default_launch` can pick, on this model's
    layout (layer 0 of the real pool)."""
    config = engine.model_config
    kv = engine.kv
    key_cache, value_cache = kv.kv_cache[:, 0, 0], kv.kv_cache[:, 0, 1]
    dtype = kv.kv_cache.dtype
    q = torch.zeros((1, config.num_heads, config.head_dim), dtype=dtype, device=engine.device)
    seq_lens = torch.ones(1, dtype=torch.int32, device=engine.device)
    scale = config.head_dim ** -0.5
    tables = torch.zeros((1, 1), dtype=torch.int32, device=engine.device)
    for launch in decode_launch_variants(config.head_dim):
        kernels.paged_decode_attention(q, key_cache, value_cache, tables, seq_lens, scale,
                                       launch=launch)
