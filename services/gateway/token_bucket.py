"""Per-tenant token buckets: each API key may spend `rate` tokens (prompt + max_tokens) per second,
with bursts up to `burst`. A request that would overdraw its bucket is told when it would fit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TenantBuckets:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def try_take(self, tenant: str, tokens: int) -> float:
        """Takes `tokens` and returns 0.0, or takes nothing and returns the seconds until they
        would be available (inf when the request is larger than the bucket)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.setdefault(tenant, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if tokens > self._burst:
            return float("inf")
        if bucket.tokens >= tokens:
            bucket.tokens -= tokens
            return 0.0
        return (tokens - bucket.tokens) / self._rate

    def refund(self, tenant: str, tokens: int) -> None:
        """Gives back tokens taken for a request that was then not admitted."""
        bucket = self._buckets.get(tenant)
        if bucket is not None:
            bucket.tokens = min(self._burst, bucket.tokens + tokens)
