"""Turns a batch of logits into next tokens: greedy, temperature, top-k, top-p, seeds, logprobs.

Sampling is the Gumbel-max trick, argmax(logits / T + G), with G drawn per row. A seeded row
draws G from a counter-based generator keyed by (seed, index of the output token) alone, so its
token is a pure function of (seed, index, logits): the same in any batch, on any device, and for a
request resumed in another process. Unseeded rows share the engine's generator. Everything is
vectorised over the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.engine.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on device without waiting: a copy from pageable memory would make the host
    wait for every kernel queued before it."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _row_values(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(values, dtype=dtype), device)


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) on int64 lanes holding [0, 2**32). Every
    product stays below 2**63, so the arithmetic is exact on every device."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def counter_uniform(keys: torch.Tensor, width: int) -> torch.Tensor:
    """u[r, j] in (0, 1), a hash of (keys[r], j): int64 keys in [0, 2**63) -> float32 [R, width].
    Strictly inside (0, 1), so the Gumbel noise derived from it is always finite."""
    low = _mix32(keys & _M32)[:, None]
    high = _mix32((keys >> 32) ^ 0x9E3779B9)[:, None]
    counters = (torch.arange(width, dtype=torch.int64, device=keys.device) * 0x9E3779B1) & _M32
    bits = _mix32(_mix32(counters[None, :] ^ low) ^ high)
    return ((bits >> 8).to(torch.float32) + 0.5) / 2**24     # 24 bits: exact in float32


def row_seed(seed: int, output_index: int) -> int:
    """A well-mixed 63-bit seed for one output token of a seeded request (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + (output_index + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass(frozen=True)
class SamplingRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    output_index: int           # how many tokens the request has produced before this one


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: torch.Tensor                  # int64 [N]
    logprobs: torch.Tensor | None = None     # float32 [N]: log p(chosen token), raw distribution
    top_ids: torch.Tensor | None = None      # int64 [N, max_n]
    top_logprobs: torch.Tensor | None = None  # float32 [N, max_n]


class Sampler:
    def __init__(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """logits: fp32 [N, vocab], one row per entry of rows."""
        if all(r.params.greedy for r in rows):
            token_ids = logits.argmax(dim=-1)
        else:
            greedy = _row_values([r.params.greedy for r in rows], torch.bool, logits.device)
            scores = filter_logits(logits, rows)
            token_ids = (scores + self._gumbel(logits, rows)).argmax(dim=-1)
            token_ids = torch.where(greedy, logits.argmax(dim=-1), token_ids)
        return self._with_logprobs(logits, rows, token_ids)

    def _gumbel(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        device = logits.device
        # -log(E) with E ~ Exp(1) is Gumbel: one draw and one log per element. E is kept above
        # 0 so that G is finite: a masked (-inf) token can never win.
        noise = torch.empty_like(logits).exponential_(generator=self.generator)
        noise.clamp_(min=torch.finfo(noise.dtype).tiny).log_().neg_()
        seeded = [i for i, r in enumerate(rows) if r.params.seed is not None and not r.params.greedy]
        if seeded:
            keys = [row_seed(rows[i].params.seed, rows[i].output_index) for i in seeded]
            uniform = counter_uniform(_row_values(keys, torch.int64, device), logits.shape[1])
            noise[_row_values(seeded, torch.int64, device)] = -torch.log(-torch.log(uniform))
        return noise

    def _with_logprobs(self, logits: torch.Tensor, rows: Sequence[SamplingRow],
                       token_ids: torch.Tensor) -> SamplerOutput:
        max_n = max((r.params.logprobs for r in rows if r.params.logprobs is not None), default=None)
        if max_n is None:
            return SamplerOutput(token_ids)
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(1, token_ids[:, None])[:, 0]
        top_logprobs, top_ids = logprobs.topk(max_n, dim=-1) if max_n else (None, None)
        return SamplerOutput(token_ids, chosen, top_ids, top_logprobs)


def filter_logits(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """logits / temperature with the tokens outside top-k and top-p set to -inf. Both cut at a
    threshold score found among the row's largest scores (a partial top-k, or one sort), so a
    token tied with the last one kept stays, and no sorted order is scattered back."""
    device = logits.device
    temperature = _row_values([r.params.temperature or 1.0 for r in rows], logits.dtype, device)
    scores = logits / temperature[:, None]
    ordered = None                  # every row's kept scores and fewer, descending (top-k)
    if any(r.params.top_k_enabled for r in rows):
        vocab = logits.shape[1]
        ks = [min(r.params.top_k, vocab) if r.params.top_k_enabled else 0 for r in rows]
        largest = scores.topk(max(ks), dim=-1).values                    # descending
        # Column max(ks) is -inf: the threshold of the rows without a top-k.
        padded = F.pad(largest, (0, 1), value=float("-inf"))
        index = _row_values([k - 1 if k else max(ks) for k in ks], torch.int64, device)
        kth = padded.gather(1, index[:, None])
        scores = scores.masked_fill(scores < kth, float("-inf"))
        if all(ks):
            ordered = largest.masked_fill(largest < kth, float("-inf"))
    if any(r.params.top_p < 1.0 for r in rows):
        # A row without top-p asks for more than the whole mass: it keeps every token.
        top_p = _row_values([r.params.top_p if r.params.top_p < 1.0 else 2.0 for r in rows],
                            logits.dtype, device)[:, None]
        if ordered is None:
            ordered = scores.sort(dim=-1, descending=True).values
        # Keep the smallest prefix whose mass reaches top_p: the tokens before the first whose
        # running mass (itself included) reaches it, and that one (the most likely always stays).
        last = (ordered.softmax(dim=-1).cumsum(dim=-1) < top_p).sum(dim=-1, keepdim=True)
        threshold = ordered.gather(1, last.clamp_(max=ordered.shape[1] - 1))
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    return scores
