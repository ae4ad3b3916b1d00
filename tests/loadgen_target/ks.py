"""One-sample Kolmogorov-Smirnov test (no scipy here): statistic and asymptotic p-value."""

from __future__ import annotations

import math
from typing import Callable, Sequence


def ks_test(samples: Sequence[float], cdf: Callable[[float], float]) -> tuple[float, float]:
    xs = sorted(samples)
    n = len(xs)
    d = max(max((i + 1) / n - cdf(x), cdf(x) - i / n) for i, x in enumerate(xs))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def exponential_cdf(rate: float) -> Callable[[float], float]:
    return lambda x: 1 - math.exp(-rate * x) if x > 0 else 0.0


def erlang2_cdf(rate: float) -> Callable[[float], float]:
    """Gamma(shape 2) with mean 1/rate: the gaps of --burstiness 2."""
    theta = 1 / (2 * rate)
    return lambda x: 1 - math.exp(-x / theta) * (1 + x / theta) if x > 0 else 0.0
