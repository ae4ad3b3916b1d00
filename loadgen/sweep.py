"""Sweeps: `--sweep concurrency:1,2,4,...` or `--sweep rate:0.5,1,2`, one run per value."""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.errors import BenchConfigError
from loadgen.load_pattern import LoadSpec

DIMENSIONS = ("concurrency", "rate")


@dataclass(frozen=True)
class SweepSpec:
    dimension: str
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.dimension not in DIMENSIONS:
            raise BenchConfigError("--sweep", f"dimension must be concurrency or rate, got {self.dimension!r}")
        if not self.values:
            raise BenchConfigError("--sweep", "needs at least one value")
        for v in self.values:
            if not v > 0 or (self.dimension == "concurrency" and v != int(v)):
                raise BenchConfigError("--sweep", f"{self.dimension} values must be "
                                                  f"{'integers >= 1' if self.dimension == 'concurrency' else '> 0'}, got {v:g}")

    def base_pattern(self, max_concurrency: int | None, request_rate: float) -> tuple[int | None, float]:
        """(max_concurrency, request_rate) of the sweep's first point, from the flags given: the
        base load spec is validated as that point, so a sweep supplies what its dimension sets
        (a concurrency sweep with --duration needs no --max-concurrency)."""
        if self.dimension == "concurrency":
            return int(self.values[0]), float("inf")
        return max_concurrency, float(self.values[0])

    def load_specs(self, base: LoadSpec) -> list[LoadSpec]:
        return [point_spec(base, self.dimension, v) for v in self.values]


def point_spec(base: LoadSpec, dimension: str, value: float) -> LoadSpec:
    """base with its concurrency (closed loop) or its rate (open loop, base's cap kept) set."""
    if dimension == "concurrency":
        return base.with_changes(max_concurrency=int(value), request_rate=float("inf"))
    return base.with_changes(request_rate=float(value))


def parse_sweep(text: str) -> SweepSpec:
    dimension, sep, values = text.partition(":")
    if not sep:
        raise BenchConfigError("--sweep", f"expected concurrency:1,2,4 or rate:1,2,4, got {text!r}")
    try:
        numbers = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise BenchConfigError("--sweep", f"values must be numbers, got {values!r}") from None
    return SweepSpec(dimension.strip(), numbers)
