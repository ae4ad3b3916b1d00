"""How long a new prompt would wait for prefill: the prompt tokens queued on the prefill workers
over the rate they compute prompt tokens at, measured from their load reports.

A worker's rate is learned only while it is busy (tokens were queued over the interval), so an
idle spell does not read as a slow worker; intervals shorter than MIN_INTERVAL_S are merged, and
samples are smoothed (EWMA). Until a rate is known the wait is unknown (None): admission then
bounds the queue by tokens alone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from services.gateway.workers import WorkerHandle

MIN_INTERVAL_S = 0.25
SMOOTHING = 0.3            # weight of a new sample


@dataclass
class _Sample:
    at: float
    computed: int
    busy: bool


class PrefillRates:
    def __init__(self) -> None:
        self._last: dict[str, _Sample] = {}
        self.tokens_per_s: dict[str, float] = {}

    def observe(self, workers: Sequence[WorkerHandle], now: float | None = None) -> None:
        """Reads the workers' latest reports (call after each round of polls)."""
        now = time.monotonic() if now is None else now
        for w in workers:
            if w.report is None:
                continue
            computed, busy = w.report.prompt_tokens_computed, w.queued_prompt_tokens > 0
            last = self._last.get(w.address)
            if last is None or computed < last.computed:          # first report, or a restart
                self._last[w.address] = _Sample(now, computed, busy)
                continue
            if now - last.at < MIN_INTERVAL_S:
                last.busy = last.busy and busy
                continue
            if last.busy and busy and computed > last.computed:
                rate = (computed - last.computed) / (now - last.at)
                old = self.tokens_per_s.get(w.address)
                self.tokens_per_s[w.address] = rate if old is None else old + SMOOTHING * (rate - old)
            self._last[w.address] = _Sample(now, computed, busy)

    def wait_s(self, workers: Sequence[WorkerHandle], prompt_tokens: int) -> float | None:
        """Seconds until a prompt of prompt_tokens, queued now, would be computed; None: unknown."""
        healthy = [w for w in workers if w.accepting]
        rates = [self.tokens_per_s.get(w.address) for w in healthy]
        if not healthy or any(r is None for r in rates):
            return None
        queued = sum(w.queued_prompt_tokens for w in healthy)
        return (queued + prompt_tokens) / sum(rates)
