"""Piecewise CUDA graphs: every batch the whole-forward graphs do not take (a prefill chunk
beside decode rows, a long prompt), with all but its attention replayed.

A mixed batch cannot have a graph of its own forward: its attention reads per-batch metadata in
two kernels whose split (decode rows, prefill chunks) changes every step. The rest of a layer
sees only token-shaped tensors. So for each token bucket the forward is captured as one graph
per piece between two attentions:

    piece 0:          embed, layer 0 up to its attention            -> q, k, v, residual
    piece i (1..L-1): layer i-1 after its attention, layer i up to its attention
    piece L:          layer L-1 after its attention, final norm      -> hidden states

and a step replays piece 0, then for each layer rotates q and k, writes its K/V and runs its
attention eagerly, on the real tokens with the batch's own metadata (the decode kernel for decode
rows, the prefill kernel for chunks, as the eager pass), and replays the next piece. Pieces pass q,
k, v, the residual and the attention output through persistent buffers; rows past the real tokens
are padding that no attention reads and no one keeps. A step thus launches L + 1 graphs (33 for a
32-layer model) and ~3 kernels a layer instead of ~13 kernels and a dozen torch ops a layer: the
host keeps ahead of the GPU.

Buckets go up to MAX_TOKENS: beyond it a step's GPU time is several times the eager host time,
and a larger bucket would only cost memory."""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from services.engine.cuda_graphs import copy_padded
from services.engine.model.attention import AttentionMetadata, paged_attention

log = logging.getLogger("tandem.engine")

MAX_TOKENS = 2048
_BUCKETS = (16, 32, 64, 128, *range(256, MAX_TOKENS + 1, 128))


def piecewise_buckets(max_tokens: int) -> tuple[int, ...]:
    """Token buckets below max_tokens (the step budget, at most MAX_TOKENS) and max_tokens."""
    max_tokens = min(max_tokens, MAX_TOKENS)
    return tuple(sorted({*(t for t in _BUCKETS if t < max_tokens), max_tokens}))


class PiecewiseGraphs:
    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, max_tokens: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.layers = model.model.layers
        self.buckets = piecewise_buckets(max_tokens)
        config, dtype = model.config, kv_cache.dtype
        rows, dev = self.buckets[-1], kv_cache.device
        heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self._input_ids = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._positions = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._q = torch.zeros((rows, heads, head_dim), dtype=dtype, device=dev)
        self._k = torch.zeros((rows, kv_heads, head_dim), dtype=dtype, device=dev)
        self._v = torch.zeros((rows, kv_heads, head_dim), dtype=dtype, device=dev)
        self._attention = torch.zeros((rows, heads, head_dim), dtype=dtype, device=dev)
        self._residual = torch.zeros((rows, config.hidden_size), dtype=dtype, device=dev)
        # bucket -> one (graph, output) per piece; only the last piece's output is read
        self._graphs: dict[int, list[tuple[torch.cuda.CUDAGraph, torch.Tensor | None]]] = {}

    @property
    def num_graphs(self) -> int:
        return sum(len(pieces) for pieces in self._graphs.values())

    def bucket(self, num_tokens: int) -> int | None:
        return next((b for b in self._graphs if b >= num_tokens), None)

    @torch.inference_mode()
    def capture(self) -> float:
        """Capture every piece of every bucket, largest bucket first, into one memory pool;
        returns the seconds it took."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for tokens in reversed(self.buckets):
            pieces = []
            for index in range(len(self.layers) + 1):
                self.piece(index, tokens)       # eager once: loads the cuBLAS kernels
                torch.cuda.synchronize(self.kv_cache.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    output = self.piece(index, tokens)
                pieces.append((graph, output))
            self._graphs[tokens] = pieces
        self._graphs = dict(sorted(self._graphs.items()))
        torch.cuda.synchronize(self.kv_cache.device)
        seconds = time.perf_counter() - start
        log.info("captured piecewise CUDA graphs for %d token buckets (%d graphs) in %.1f s",
                 len(self._graphs), self.num_graphs, seconds)
        return seconds

    @torch.inference_mode()
    def run(self, bucket: int, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """Replay the bucket's pieces around the batch's eager attentions; returns the hidden
        states [T, hidden] (a view into the last graph's output: read it before the next
        replay)."""
        pieces = self._graphs[bucket]

        def replay(index: int) -> torch.Tensor | None:
            graph, output = pieces[index]
            graph.replay()
            return output
        return self.forward(bucket, input_ids, positions, meta, replay)

    def forward(self, bucket: int, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata,
                piece: Callable[[int], torch.Tensor | None] | None = None) -> torch.Tensor:
        """The pieces (replayed by `piece`, else run eagerly: what the graphs capture) with the
        eager attentions between them, over the buffers padded to the bucket."""
        piece = piece or (lambda index: self.piece(index, bucket))
        n = input_ids.shape[0]
        copy_padded(self._input_ids, input_ids, bucket, 0)
        copy_padded(self._positions, positions, bucket, 0)
        for index, layer in enumerate(self.layers):
            piece(index)
            paged_attention(self._q[:n], self._k[:n], self._v[:n], self._positions[:n],
                            self.model.cos_sin_cache, self.kv_cache[:, index], meta,
                            layer.self_attn.scale, out=self._attention[:n])
        return piece(len(self.layers))[:n]

    def piece(self, index: int, tokens: int) -> torch.Tensor | None:
        """Piece `index` over the first `tokens` rows of the buffers; the last returns the
        hidden states, the others leave q, k, v and the residual in the buffers."""
        if index == 0:
            hidden = self.model.model.embed_tokens(self._input_ids[:tokens])
            residual = None
        else:
            hidden, residual = self.layers[index - 1].after_attention(
                self._attention[:tokens], self._residual[:tokens])
        if index == len(self.layers):
            hidden, _ = self.model.model.norm(hidden, residual)
            return hidden
        q, k, v, residual = self.layers[index].before_attention(hidden, residual)
        for buffer, value in ((self._q, q), (self._k, k), (self._v, v),
                              (self._residual, residual)):
            buffer[:tokens].copy_(value)
        return None
