"""Capacity search: the largest concurrency (or rate) whose run meets the SLOs. Doubles from a
start value until a run fails the SLOs (bracketing), then bisects between the last pass and the
first failure, within a fixed number of runs. Assumes latency grows with load, as it does for a
server that is not misbehaving; each probe is reported so a non-monotone server shows."""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.errors import BenchConfigError
from loadgen.metrics import slo_value
from loadgen.records import RequestRecord

SLO_METRICS = ("ttft", "ttst", "tpot", "itl", "e2el")
_ALIASES = {"e2e": "e2el"}


@dataclass(frozen=True)
class SLOSpec:
    """Limits in ms on latency percentiles; failed requests count as infinitely slow."""

    limits: tuple[tuple[str, float], ...]
    percentile: float = 99.0

    def __post_init__(self) -> None:
        if not self.limits:
            raise BenchConfigError("--slo", "needs at least one limit, e.g. ttft_ms:500")
        if not 0 < self.percentile <= 100:
            raise BenchConfigError("--slo", f"p must be in (0, 100], got {self.percentile:g}")
        for metric, limit in self.limits:
            if metric not in SLO_METRICS:
                raise BenchConfigError("--slo", f"unknown metric {metric!r}; use {', '.join(SLO_METRICS)}")
            if not limit > 0:
                raise BenchConfigError("--slo", f"{metric} limit must be > 0 ms, got {limit:g}")

    def evaluate(self, records: list[RequestRecord]) -> tuple[bool, dict[str, float]]:
        """(met, {"p99_ttft_ms": value, ...}) over the measured requests."""
        observed = {f"p{self.percentile:g}_{m}_ms": slo_value(records, m, self.percentile) for m, _ in self.limits}
        met = all(observed[f"p{self.percentile:g}_{m}_ms"] <= limit for m, limit in self.limits)
        return met, observed


def parse_slo(text: str) -> SLOSpec:
    """ttft_ms:500,tpot_ms:50,p:99"""
    limits, percentile = [], 99.0
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise BenchConfigError("--slo", f"expected key:value items like ttft_ms:500,p:99, got {item!r}")
        key = key.strip().lower()
        if key == "p":
            percentile = number
            continue
        metric = key.removesuffix("_ms")
        limits.append((_ALIASES.get(metric, metric), number))
    return SLOSpec(tuple(limits), percentile)


class CapacitySearch:
    """Proposes the next load value to try from the outcomes so far. Concurrency is searched in
    integers down to a gap of 1; rate until hi/lo <= 1 + rate_tolerance."""

    def __init__(self, dimension: str, start: float, maximum: float, max_runs: int,
                 rate_tolerance: float = 0.05) -> None:
        if max_runs < 1:
            raise BenchConfigError("--capacity-max-runs", f"must be >= 1, got {max_runs}")
        if not 0 < start <= maximum:
            raise BenchConfigError("--capacity-start", f"must be in (0, --capacity-max={maximum:g}], got {start:g}")
        self.integer = dimension == "concurrency"
        self.start, self.maximum, self.max_runs, self.tolerance = start, maximum, max_runs, rate_tolerance
        self.best_pass: float | None = None
        self.first_fail: float | None = None
        self.probes: list[tuple[float, bool]] = []

    def _bracket_closed(self) -> bool:
        if self.first_fail is None:
            return self.best_pass is not None and self.best_pass >= self.maximum
        lo = self.best_pass or 0.0
        if self.integer:
            return self.first_fail - lo <= 1
        return lo > 0 and self.first_fail / lo <= 1 + self.tolerance

    def next_value(self) -> float | None:
        if len(self.probes) >= self.max_runs or self._bracket_closed():
            return None
        if not self.probes:
            return self.start
        if self.first_fail is None:                        # still bracketing upwards
            nxt = min(self.best_pass * 2, self.maximum)
            return float(int(nxt)) if self.integer else nxt
        lo, hi = self.best_pass or 0.0, self.first_fail
        if self.integer:
            return float((int(lo) + int(hi)) // 2)
        return (lo + hi) / 2 if lo > 0 else hi / 2

    def record(self, value: float, met: bool) -> None:
        self.probes.append((value, met))
        if met:
            self.best_pass = value if self.best_pass is None else max(self.best_pass, value)
        else:
            self.first_fail = value if self.first_fail is None else min(self.first_fail, value)

    def summary(self) -> dict:
        """capacity: the largest value that met the SLOs (0 when none did); converged: the
        bracket closed (or the maximum passed) within the run budget."""
        return {"capacity": self.best_pass or 0, "first_failing": self.first_fail,
                "reached_maximum": self.best_pass is not None and self.best_pass >= self.maximum,
                "runs": len(self.probes), "converged": self._bracket_closed(),
                "probes": [{"value": v, "slo_met": m} for v, m in self.probes]}
