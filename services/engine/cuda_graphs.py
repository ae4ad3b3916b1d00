"""CUDA graphs of the decode forward pass: captured once at start-up, replayed every decode step.

An eager decode step of an 8B model launches ~400 kernels, and on a fast card the host cannot
queue them as fast as the GPU runs them; a replayed graph launches them all at once. A graph
fixes its shapes and its tensors' addresses, so:

- inputs live in persistent device buffers (token ids, positions, slots, sequence lengths, block
  tables) that each step overwrites in place, then replays the graph of its bucket;
- a batch of n sequences runs in the graph of the smallest batch bucket >= n; the padded rows
  write no K/V (slot -1) and attend to one token of block 0, and their outputs are ignored;
- the block table width is bucketed as well (the decode kernel sizes its partitions from it), so
  short contexts do not pay for programs sized for max_model_len.

Graphs are captured largest first into one memory pool: they never run concurrently, so each
reuses the activations memory of the others. Only the hidden states come out of the graph; the LM
head and the sampler run eagerly on the rows that are real."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from services.engine.kv_cache import cdiv
from services.engine.model.attention import AttentionMetadata

log = logging.getLogger("tandem.engine")

_SMALL_BUCKETS = (1, 2, 4, 8)
_BUCKET_STEP = 16
_MIN_WIDTH_TOKENS = 4096
_WIDTH_GROWTH = 4


def batch_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """1, 2, 4, 8, every multiple of 16 below max_num_seqs, and max_num_seqs."""
    buckets = {b for b in _SMALL_BUCKETS if b < max_num_seqs}
    buckets.update(range(_BUCKET_STEP, max_num_seqs, _BUCKET_STEP))
    buckets.add(max_num_seqs)
    return tuple(sorted(buckets))


def width_buckets(max_blocks: int, block_size: int) -> tuple[int, ...]:
    """Block-table widths: 4k tokens' worth, then x4 each, ending at max_blocks."""
    width = min(max_blocks, cdiv(_MIN_WIDTH_TOKENS, block_size))
    widths = [width]
    while widths[-1] < max_blocks:
        widths.append(min(max_blocks, widths[-1] * _WIDTH_GROWTH))
    return tuple(widths)


def bucket_for(value: int, buckets: tuple[int, ...]) -> int | None:
    for bucket in buckets:
        if bucket >= value:
            return bucket
    return None


@dataclass(frozen=True)
class DecodeInputs:
    """Host tensors of one decode batch of n sequences (n = len(input_ids))."""

    input_ids: torch.Tensor     # int64 [n], on the host or already on the device
    positions: torch.Tensor     # int64 [n]
    slot_mapping: torch.Tensor  # int64 [n]
    seq_lens: torch.Tensor      # int32 [n]
    block_tables: torch.Tensor  # int32 [n, width]


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, max_num_seqs: int,
                 max_blocks: int, block_size: int) -> None:
        """max_blocks: the widest block table a decode batch can have (max_model_len's blocks,
        rounded up as the runner rounds its tables)."""
        self.model = model
        self.kv_cache = kv_cache
        self.device = kv_cache.device
        self.batch_buckets = batch_buckets(max_num_seqs)
        self.width_buckets = width_buckets(max_blocks, block_size)
        rows, width = self.batch_buckets[-1], self.width_buckets[-1]
        dev = self.device
        self._input_ids = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._positions = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._slots = torch.full((rows,), -1, dtype=torch.int64, device=dev)
        self._seq_lens = torch.ones(rows, dtype=torch.int32, device=dev)
        self._tables = torch.zeros((rows, width), dtype=torch.int32, device=dev)
        self._query_start_loc = torch.arange(rows + 1, dtype=torch.int32, device=dev)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def fits(self, num_seqs: int, width: int) -> bool:
        return num_seqs <= self.batch_buckets[-1] and width <= self.width_buckets[-1]

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture every (batch, width) bucket; returns the seconds it took."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for width in reversed(self.width_buckets):
            for rows in reversed(self.batch_buckets):
                self._forward(rows, width)      # eager once: compiles, and sets up cuBLAS
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    hidden = self._forward(rows, width)
                self._graphs[(rows, width)] = (graph, hidden)
        torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        log.info("captured %d decode CUDA graphs (batch %s, block-table width %s) in %.1f s",
                 len(self._graphs), list(self.batch_buckets), list(self.width_buckets), seconds)
        return seconds

    @torch.inference_mode()
    def run(self, inputs: DecodeInputs) -> torch.Tensor:
        """Copy one batch into the graph's buffers, replay, and return its hidden states [n, hidden]
        (a view into the graph's output: read it before the next replay)."""
        n, used_width = inputs.block_tables.shape
        rows = bucket_for(n, self.batch_buckets)
        width = bucket_for(used_width, self.width_buckets)
        graph, hidden = self._graphs[(rows, width)]
        copy_padded(self._input_ids, inputs.input_ids, rows, 0)
        copy_padded(self._positions, inputs.positions, rows, 0)
        copy_padded(self._slots, inputs.slot_mapping, rows, -1)    # padded rows write no K/V
        copy_padded(self._seq_lens, inputs.seq_lens, rows, 1)      # and attend to one token
        copy_async(self._tables[:n, :used_width], inputs.block_tables)
        graph.replay()
        return hidden[:n]

    def _forward(self, rows: int, width: int) -> torch.Tensor:
        meta = AttentionMetadata(query_start_loc=self._query_start_loc[:rows + 1],
                                 seq_lens=self._seq_lens[:rows],
                                 block_tables=self._tables[:rows, :width],
                                 slot_mapping=self._slots[:rows], max_query_len=1,
                                 max_seq_len=width, num_decodes=rows)
        return self.model(self._input_ids[:rows], self._positions[:rows], self.kv_cache, meta)


def copy_padded(buffer: torch.Tensor, values: torch.Tensor, rows: int, pad: int) -> None:
    """Values padded to the bucket, in one asynchronous copy into the buffer."""
    n = values.shape[0]
    if n < rows:
        values = torch.cat([values, values.new_full((rows - n,), pad)])
    copy_async(buffer[:rows], values)


def copy_async(target: torch.Tensor, values: torch.Tensor) -> None:
    """target.copy_(values) without making the host wait: host values bound for the GPU go
    from pinned memory (a copy from pageable memory waits for every kernel queued before it)."""
    if target.is_cuda and not values.is_cuda:
        values = values.pin_memory()
    target.copy_(values, non_blocking=True)
