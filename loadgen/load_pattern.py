"""How requests arrive: a closed loop at fixed concurrency, or an open loop at a rate (Poisson,
or gamma-distributed gaps with --burstiness), optionally capped by --max-concurrency."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from loadgen.errors import BenchConfigError


@dataclass(frozen=True)
class LoadSpec:
    """One load point. request_rate=inf means "send as soon as a slot is free": with
    max_concurrency that is a closed loop; without it every request goes at once (vLLM's default).
    The run ends after num_prompts measured requests or duration_s seconds, whichever comes first;
    the first warmup_requests are sent the same way but left out of every metric.
    A closed loop whose slots all start at one instant stays in lock-step (every stream's tokens
    fall due together, a thundering herd real users never make); ramp_up_s spreads the slots'
    first sends evenly, and with enough warm-up requests the measured phase sees the full
    concurrency with arrivals out of phase."""

    max_concurrency: int | None = None
    request_rate: float = math.inf
    burstiness: float = 1.0
    num_prompts: int | None = 1000
    duration_s: float | None = None
    warmup_requests: int = 0
    request_timeout_s: float = 600.0
    seed: int = 0
    ramp_up_s: float = 0.0            # closed loop: slot i starts at i * ramp_up_s / max_concurrency

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise BenchConfigError("--max-concurrency", f"must be >= 1, got {self.max_concurrency}")
        if not self.request_rate > 0:
            raise BenchConfigError("--request-rate", f"must be > 0 (or inf), got {self.request_rate}")
        if not self.burstiness > 0:
            raise BenchConfigError("--burstiness", f"must be > 0, got {self.burstiness}")
        if self.num_prompts is None and self.duration_s is None:
            raise BenchConfigError("--num-prompts", "give --num-prompts or --duration to bound the run")
        if self.closed_loop and self.max_concurrency is None and self.num_prompts is None:
            raise BenchConfigError("--duration", "needs --max-concurrency or --request-rate: sending every "
                                                 "request at once has no end without --num-prompts")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise BenchConfigError("--num-prompts", f"must be >= 1, got {self.num_prompts}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise BenchConfigError("--duration", f"must be > 0 seconds, got {self.duration_s}")
        if self.warmup_requests < 0:
            raise BenchConfigError("--warmup-requests", f"must be >= 0, got {self.warmup_requests}")
        if self.ramp_up_s < 0:
            raise BenchConfigError("--ramp-up", f"must be >= 0 seconds, got {self.ramp_up_s}")
        if self.ramp_up_s and not (self.closed_loop and self.max_concurrency):
            raise BenchConfigError("--ramp-up", "applies to a closed loop (--max-concurrency without --request-rate)")
        if not self.request_timeout_s > 0:
            raise BenchConfigError("--request-timeout", f"must be > 0 seconds, got {self.request_timeout_s}")

    @property
    def closed_loop(self) -> bool:
        return math.isinf(self.request_rate)

    @property
    def label(self) -> str:
        if self.closed_loop:
            return f"concurrency={self.max_concurrency}" if self.max_concurrency else "all-at-once"
        cap = f", max_concurrency={self.max_concurrency}" if self.max_concurrency else ""
        return f"rate={self.request_rate:g}/s{cap}"

    def with_changes(self, **changes) -> "LoadSpec":
        return replace(self, **changes)


def arrival_gaps(rate: float, burstiness: float, rng: np.random.Generator) -> Iterator[float]:
    """Gaps between arrivals, in seconds: gamma(shape=burstiness, mean=1/rate). burstiness=1 is a
    Poisson process; below 1 arrivals come in bursts, above 1 they are more even."""
    scale = 1.0 / (rate * burstiness)
    while True:
        for gap in rng.gamma(burstiness, scale, size=1024):
            yield float(gap)


def split_load(spec: LoadSpec, parts: int) -> list[LoadSpec]:
    """Shares for `parts` worker processes whose union is the requested load: concurrency and
    request counts split as evenly as integers allow, the rate divided (the superposition of
    independent Poisson processes is a Poisson process of the summed rate), seeds distinct.
    Never more parts than concurrency slots."""
    if spec.max_concurrency is not None:
        parts = min(parts, spec.max_concurrency)
    if spec.num_prompts is not None:
        parts = min(parts, spec.num_prompts)
    parts = max(1, parts)

    def share(total: int | None, i: int) -> int | None:
        return None if total is None else total // parts + (1 if i < total % parts else 0)

    return [spec.with_changes(max_concurrency=share(spec.max_concurrency, i),
                              request_rate=spec.request_rate / parts,
                              num_prompts=share(spec.num_prompts, i),
                              warmup_requests=share(spec.warmup_requests, i),
                              seed=spec.seed * 1000 + i)
            for i in range(parts)]
