"""What a worker's steps need beside its weights and its KV pool, measured before the pool is
sized, so that the pool leaves room for it inside the worker's memory share.

On a GPU the engine allocates outside its pool: an eager step's activations (the largest at the
step's token budget: a prefill of max_num_batched_tokens tokens, then the LM head and the sampler
over as many rows as can sample), and one private memory pool per kind of CUDA graph (decode,
prefill, piecewise), each about as large as the largest forward it captures. `activation_reserve`
runs each of those forwards once, over a scratch KV pool just large enough for it, and returns
the sum of their peaks; the KV pool then gets the worker's share less its weights and this
reserve (kv_cache.GpuBudget). On CPU there is none: the pool has a byte budget of its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from services.engine.config import ModelConfig, SchedulerConfig
from services.engine.errors import ConfigError
from services.engine.kv_cache import cdiv
from services.engine.model.attention import AttentionMetadata
from services.engine.piecewise_graphs import MAX_TOKENS as PIECEWISE_MAX_TOKENS
from services.engine.prefill_graphs import MAX_TOKENS as PREFILL_GRAPH_MAX_TOKENS
from services.engine.sampler import Sampler, SamplingRow
from services.engine.sampling_params import MAX_LOGPROBS, SamplingParams

log = logging.getLogger("tandem.engine")

# The caching allocator holds more than it hands out (rounded blocks, segments split between
# sizes), and each CUDA graph keeps its own small allocations: headroom on what was measured.
_ALLOCATOR_SLACK = 0.1
_FIXED_BYTES = 256 * 2**20
# The sampler's costliest rows: a top-p sort over the vocabulary and the most logprobs allowed.
_COSTLIEST = SamplingParams(temperature=0.8, top_p=0.9, logprobs=MAX_LOGPROBS, seed=1)


def activation_reserve(model: torch.nn.Module, config: ModelConfig, scheduler: SchedulerConfig,
                       max_model_len: int, block_size: int, device: torch.device,
                       graphs: bool) -> int:
    """Bytes the worker's steps allocate beside weights and pool (0 off CUDA). scheduler has
    its device's token budget resolved (SchedulerConfig.for_device)."""
    if device.type != "cuda":
        return 0
    budget, rows = scheduler.max_num_batched_tokens, scheduler.max_num_seqs
    # (tokens, tokens per sequence, rows that sample) of each forward to measure
    cases = [(budget, max_model_len, min(rows, budget))]
    if graphs:
        cases += [(min(budget, PREFILL_GRAPH_MAX_TOKENS), max_model_len, 1),
                  (min(budget, PIECEWISE_MAX_TOKENS), max_model_len, 1),
                  (rows, 1, 0)]                           # the decode graphs' widest batch
    try:
        peaks = [_peak_bytes(model, config, tokens, per_seq, samples, block_size, device)
                 for tokens, per_seq, samples in cases]
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise ConfigError(f"a step of {budget} tokens (max_num_batched_tokens) does not fit on "
                          f"{device} beside the weights: lower it, or give the worker more "
                          "memory") from None
    reserve = int(sum(peaks) * (1 + _ALLOCATOR_SLACK)) + _FIXED_BYTES
    log.info("kept beside the KV pool: %.2f GiB (an eager step of %d tokens %.2f GiB, graph "
             "pools %.2f GiB, allocator slack)", reserve / 2**30, budget, peaks[0] / 2**30,
             sum(peaks[1:]) / 2**30)
    return reserve


@dataclass(frozen=True)
class ProfileBatch:
    """One forward's inputs over a scratch KV pool of its own."""

    kv_cache: torch.Tensor
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata


def profile_batch(config: ModelConfig, tokens: int, per_seq: int, block_size: int,
                  dtype: torch.dtype, device: torch.device) -> ProfileBatch:
    """`tokens` new tokens in sequences of up to `per_seq` from position 0 (one token per
    sequence when per_seq is 1: a decode batch, through the decode kernel), each in blocks of its
    own of a pool just large enough."""
    per_seq = max(1, min(per_seq, tokens))
    lengths = [per_seq] * (tokens // per_seq) + ([tokens % per_seq] if tokens % per_seq else [])
    width = cdiv(per_seq, block_size)
    kv_cache = torch.zeros((len(lengths) * width, config.num_layers, 2, block_size,
                            config.num_kv_heads, config.head_dim), dtype=dtype, device=device)
    starts = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    tables = torch.arange(len(lengths) * width, dtype=torch.int32,
                          device=device).reshape(len(lengths), width)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    slots = torch.cat([tables[i, 0].long() * block_size + torch.arange(n, device=device)
                       for i, n in enumerate(lengths)])
    decode = per_seq == 1
    meta = AttentionMetadata(
        query_start_loc=starts, seq_lens=torch.tensor(lengths, dtype=torch.int32, device=device),
        block_tables=tables, slot_mapping=slots, max_query_len=max(lengths),
        max_seq_len=max(lengths), num_decodes=len(lengths) if decode else 0,
        prefill_query_start_loc=None if decode else starts)
    return ProfileBatch(kv_cache, torch.zeros(tokens, dtype=torch.int64, device=device),
                        positions, meta)


@torch.inference_mode()
def _peak_bytes(model: torch.nn.Module, config: ModelConfig, tokens: int, per_seq: int,
                samples: int, block_size: int, device: torch.device) -> int:
    """Peak memory of one forward of profile_batch(...) and the sampler over its last
    `samples` rows, less the batch's scratch pool."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    batch = profile_batch(config, tokens, per_seq, block_size, next(model.parameters()).dtype,
                          device)
    hidden = model(batch.input_ids, batch.positions, batch.kv_cache, batch.meta)
    if samples:
        logits = model.compute_logits(hidden[-samples:])
        Sampler(0, device)(logits, [SamplingRow(_COSTLIEST, 0)] * samples)
    torch.cuda.synchronize(device)
    scratch = batch.kv_cache.numel() * batch.kv_cache.element_size()
    peak = torch.cuda.max_memory_allocated(device) - base - scratch
    del batch, hidden
    torch.cuda.empty_cache()
    return max(0, peak)
