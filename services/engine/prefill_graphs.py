"""CUDA graphs of the prefill forward pass, for the prompts whose eager pass the host slows down.

An eager prefill launches every kernel of every layer from Python: on an H200's host a
512-token prefill took 16-27 ms of wall time for ~11 ms of GPU work (benchmarks/RESULTS.md), so
the first token of a short prompt waited for the host, not the GPU. A replayed graph queues all
of it at once. Prefill-only batches (no decode rows) up to MAX_TOKENS tokens replay the graph of
their (token bucket, sequence bucket):

- tokens are padded to the token bucket: padded tokens write no K/V (slot -1), belong to no
  sequence, and their rows of the output are never read;
- sequences are padded to the sequence bucket with sequences of no new tokens (query_start_loc
  repeats the real total), whose attention tiles exit at once;
- the block table has max_model_len's width: the prefill kernel walks each sequence's own length,
  so the width costs nothing, and a cached prefix or an earlier chunk is read as eagerly.

Padding is not free: from ~200 tokens on, the products are compute-bound, and each padded token
costs what a real one does (~0.023 ms on an H200). So a lone prompt, the common case when a
server is not saturated, has a bucket every SINGLE_STEP tokens (a 513-token prompt, BOS and 512,
pads to 544, not 640), and several prompts share coarser ones. A sequence bucket is captured
only for token buckets with MIN_TOKENS_PER_SEQ tokens per sequence, so the graph count stays
small (many tiny prompts pad to a larger token bucket). Above MAX_TOKENS a prefill's GPU time
exceeds its host time, and a whole graph would save less than padding costs; those batches and
mixed ones (decode rows beside prefill chunks) replay pieces instead (piecewise_graphs.py)."""

from __future__ import annotations

import logging
import time

import torch

from services.engine.batch_inputs import BatchInputs
from services.engine.cuda_graphs import copy_async, copy_padded
from services.engine.model.attention import AttentionMetadata

log = logging.getLogger("tandem.engine")

MAX_TOKENS = 1024
SINGLE_STEP = 32
_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1024)
_SEQ_BUCKETS = (2, 4, 8, 16, 32)
MIN_TOKENS_PER_SEQ = 8


def prefill_buckets(max_tokens: int, max_seqs: int) -> tuple[tuple[int, int], ...]:
    """(tokens, sequences) of the graphs to capture, smallest first. One sequence: 16 and every
    multiple of SINGLE_STEP below max_tokens (the step budget, at most MAX_TOKENS), and
    max_tokens itself; several: the coarse token buckets below max_tokens and max_tokens, for
    sequence buckets up to max_seqs with at least MIN_TOKENS_PER_SEQ tokens per sequence."""
    single = sorted({16, *range(SINGLE_STEP, max_tokens, SINGLE_STEP), max_tokens})
    buckets = [(t, 1) for t in single if t <= max_tokens]
    coarse = [t for t in _TOKEN_BUCKETS if t < max_tokens] + [max_tokens]
    buckets += [(t, s) for t in coarse for s in _SEQ_BUCKETS
                if s <= max_seqs and s * MIN_TOKENS_PER_SEQ <= t]
    return tuple(sorted(buckets))


def pick_bucket(buckets: tuple[tuple[int, int], ...], num_tokens: int,
                num_seqs: int) -> tuple[int, int] | None:
    """The bucket with the fewest tokens that holds the batch (then the fewest sequences)."""
    fitting = [b for b in buckets if b[0] >= num_tokens and b[1] >= num_seqs]
    return min(fitting, default=None)


class PrefillGraphs:
    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, max_tokens: int,
                 max_seqs: int, max_blocks: int) -> None:
        """max_tokens: the step's token budget; max_blocks: the widest block table a sequence can
        have (max_model_len's blocks, rounded up as the runner rounds its tables)."""
        self.model = model
        self.kv_cache = kv_cache
        self.buckets = prefill_buckets(max_tokens, max_seqs)
        self.max_blocks = max_blocks
        tokens = max((t for t, _ in self.buckets), default=0)
        seqs = max((s for _, s in self.buckets), default=0)
        dev = kv_cache.device
        self._input_ids = torch.zeros(tokens, dtype=torch.int64, device=dev)
        self._positions = torch.zeros(tokens, dtype=torch.int64, device=dev)
        self._slots = torch.full((tokens,), -1, dtype=torch.int64, device=dev)
        self._query_start_loc = torch.zeros(seqs + 1, dtype=torch.int32, device=dev)
        self._seq_lens = torch.ones(seqs, dtype=torch.int32, device=dev)
        self._tables = torch.zeros((seqs, max_blocks), dtype=torch.int32, device=dev)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def bucket(self, inputs: BatchInputs) -> tuple[int, int] | None:
        """The graph a prefill-only batch replays in, or None (it runs eagerly)."""
        if inputs.num_decodes or inputs.block_tables.shape[1] > self.max_blocks:
            return None
        return pick_bucket(tuple(self._graphs), inputs.input_ids.shape[0], inputs.num_seqs)

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture every bucket, largest first, into one memory pool; returns the seconds."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for tokens, seqs in reversed(self.buckets):
            self.forward(tokens, seqs)      # eager once: loads the cuBLAS kernels of this shape
            torch.cuda.synchronize(self.kv_cache.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.forward(tokens, seqs)
            self._graphs[(tokens, seqs)] = (graph, hidden)
        torch.cuda.synchronize(self.kv_cache.device)
        seconds = time.perf_counter() - start
        log.info("captured %d prefill CUDA graphs (tokens x sequences %s) in %.1f s",
                 len(self._graphs), list(self.buckets), seconds)
        return seconds

    @torch.inference_mode()
    def run(self, bucket: tuple[int, int], inputs: BatchInputs,
            input_ids: torch.Tensor) -> torch.Tensor:
        """Replay the bucket's graph on one batch; returns its hidden states [T, hidden] (a view
        into the graph's output: read it before the next replay)."""
        graph, hidden = self._graphs[bucket]
        self.fill(bucket, inputs, input_ids)
        graph.replay()
        return hidden[:inputs.input_ids.shape[0]]

    def fill(self, bucket: tuple[int, int], inputs: BatchInputs, input_ids: torch.Tensor) -> None:
        """Copy one batch into the buffers, padded to the bucket."""
        tokens, seqs = bucket
        n, width = inputs.block_tables.shape
        total = inputs.input_ids.shape[0]
        copy_padded(self._input_ids, input_ids, tokens, 0)
        copy_padded(self._positions, inputs.positions, tokens, 0)
        copy_padded(self._slots, inputs.slot_mapping, tokens, -1)          # pads write no K/V
        copy_padded(self._query_start_loc, inputs.query_start_loc, seqs + 1, total)
        copy_padded(self._seq_lens, inputs.seq_lens, seqs, 1)
        copy_async(self._tables[:n, :width], inputs.block_tables)

    def forward(self, tokens: int, seqs: int) -> torch.Tensor:
        """The forward pass over the buffers at one bucket (what a graph captures)."""
        meta = AttentionMetadata(query_start_loc=self._query_start_loc[:seqs + 1],
                                 seq_lens=self._seq_lens[:seqs],
                                 block_tables=self._tables[:seqs],
                                 slot_mapping=self._slots[:tokens], max_query_len=tokens,
                                 max_seq_len=self.max_blocks * self.kv_cache.shape[3],
                                 num_decodes=0)
        return self.model(self._input_ids[:tokens], self._positions[:tokens], self.kv_cache, meta)
