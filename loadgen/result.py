"""The outcome of one `tandem bench` invocation: its settings and one PointResult per load
point (a single run, each sweep point, or each capacity probe)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadgen.load_pattern import LoadSpec
from loadgen.records import RequestRecord


@dataclass
class PointResult:
    spec: LoadSpec
    summary: dict
    records: list[RequestRecord]
    interrupted: bool
    started_at: str
    num_workers: int
    slo_met: bool | None = None         # capacity probes only

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass
class BenchResult:
    settings: dict                      # backend, target, model, dataset, token counting, ...
    percentiles: tuple[float, ...]
    sweep_dimension: str | None = None  # "concurrency" | "rate" when several points vary one knob
    points: list[PointResult] = field(default_factory=list)
    capacity: dict | None = None
    interrupted: bool = False

    def x_value(self, point: PointResult) -> float:
        if self.sweep_dimension == "rate":
            return point.spec.request_rate
        return float(point.spec.max_concurrency or 0)
