"""Generated datasets: `random` (vLLM's flags and semantics) and `prefix_repetition` (groups of
prompts sharing a prefix, to exercise prefix caching)."""

from __future__ import annotations

import numpy as np

from loadgen.datasets.random_text import text_of_length
from loadgen.records import BenchRequest
from loadgen.tokens import TokenCounter


def _lengths(mean: int, range_ratio: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform in [mean * (1 - r), mean * (1 + r)], as vLLM's --random-range-ratio."""
    low, high = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=n)


def random_requests(n: int, input_len: int, output_len: int, range_ratio: float, prefix_len: int,
                    counter: TokenCounter, rng: np.random.Generator) -> list[BenchRequest]:
    prefix = text_of_length(prefix_len, counter, rng)
    input_lens = _lengths(input_len, range_ratio, n, rng)
    output_lens = _lengths(output_len, range_ratio, n, rng)
    requests = []
    for in_len, out_len in zip(input_lens, output_lens):
        prompt = prefix + text_of_length(int(in_len), counter, rng)
        requests.append(BenchRequest(prompt, counter.count(prompt), int(out_len)))
    return requests


def prefix_repetition_requests(n: int, prefix_len: int, suffix_len: int, num_prefixes: int,
                               output_len: int, counter: TokenCounter,
                               rng: np.random.Generator) -> list[BenchRequest]:
    prefixes = [text_of_length(prefix_len, counter, rng) for _ in range(num_prefixes)]
    requests = []
    for i in range(n):
        prompt = prefixes[i % num_prefixes] + text_of_length(suffix_len, counter, rng)
        requests.append(BenchRequest(prompt, counter.count(prompt), output_len))
    order = rng.permutation(n)
    return [requests[i] for i in order]
