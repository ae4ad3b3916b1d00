"""Where prompts come from: DatasetSpec (the flags) -> a list of BenchRequest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadgen.datasets.files import jsonl_requests, sharegpt_requests
from loadgen.datasets.synthetic import prefix_repetition_requests, random_requests
from loadgen.errors import BenchConfigError
from loadgen.records import BenchRequest
from loadgen.tokens import TokenCounter

DATASET_NAMES = ("random", "sharegpt", "custom", "prefix_repetition")
_ALIASES = {"jsonl": "custom", "shared-prefix": "prefix_repetition", "prefix-repetition": "prefix_repetition"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "random"
    path: str | None = None
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    random_prefix_len: int = 0
    sharegpt_output_len: int | None = None
    custom_output_len: int = 256
    prefix_len: int = 256
    suffix_len: int = 256
    num_prefixes: int = 10
    prefix_output_len: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _ALIASES.get(self.name, self.name))
        if self.name not in DATASET_NAMES:
            raise BenchConfigError("--dataset-name", f"must be one of {', '.join(DATASET_NAMES)}, got {self.name!r}")
        if self.name in ("sharegpt", "custom") and not self.path:
            raise BenchConfigError("--dataset-path", f"is required with --dataset-name {self.name}")
        for flag, value, low in (("--random-input-len", self.random_input_len, 1),
                                 ("--random-output-len", self.random_output_len, 1),
                                 ("--random-prefix-len", self.random_prefix_len, 0),
                                 ("--custom-output-len", self.custom_output_len, 1),
                                 ("--prefix-repetition-prefix-len", self.prefix_len, 0),
                                 ("--prefix-repetition-suffix-len", self.suffix_len, 1),
                                 ("--prefix-repetition-num-prefixes", self.num_prefixes, 1),
                                 ("--prefix-repetition-output-len", self.prefix_output_len, 1)):
            if value < low:
                raise BenchConfigError(flag, f"must be >= {low}, got {value}")
        if not 0.0 <= self.random_range_ratio < 1.0:
            raise BenchConfigError("--random-range-ratio", f"must be in [0, 1), got {self.random_range_ratio}")
        if self.sharegpt_output_len is not None and self.sharegpt_output_len < 1:
            raise BenchConfigError("--sharegpt-output-len", f"must be >= 1, got {self.sharegpt_output_len}")


def load_requests(spec: DatasetSpec, count: int, counter: TokenCounter) -> list[BenchRequest]:
    """`count` requests in send order (file datasets are shuffled with the seed, then cycled
    when shorter than count)."""
    rng = np.random.default_rng(spec.seed)
    if spec.name == "random":
        return random_requests(count, spec.random_input_len, spec.random_output_len, spec.random_range_ratio,
                               spec.random_prefix_len, counter, rng)
    if spec.name == "prefix_repetition":
        return prefix_repetition_requests(count, spec.prefix_len, spec.suffix_len, spec.num_prefixes,
                                          spec.prefix_output_len, counter, rng)
    if spec.name == "sharegpt":
        pool = sharegpt_requests(spec.path, counter, spec.sharegpt_output_len)
    else:
        pool = jsonl_requests(spec.path, counter, spec.custom_output_len)
    order = rng.permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(count)]


__all__ = ["DATASET_NAMES", "DatasetSpec", "load_requests"]
