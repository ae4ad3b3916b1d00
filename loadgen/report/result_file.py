"""A saved result as the reports read it: the JSON document that `tandem bench --save-result`
writes (json_result.py), parsed into its load points, each placed on the axis its run varied
(concurrency or request rate). Reports of a fresh run and of files on disk go through the same
form, so what a report shows is what the file holds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from loadgen.errors import ResultFileError

DIMENSIONS = ("concurrency", "rate")


@dataclass(frozen=True)
class LoadPoint:
    label: str
    x: float | None           # the point's concurrency or rate, on its file's dimension
    summary: dict             # every summary field of the run (json_result.to_json's entry)
    requests: tuple[dict, ...]
    slo_met: bool | None = None


@dataclass(frozen=True)
class ResultFile:
    name: str                 # where it came from (a path, or the run's base name)
    settings: dict
    dimension: str
    percentiles: tuple[float, ...]
    points: tuple[LoadPoint, ...]
    capacity: dict | None
    interrupted: bool

    def __post_init__(self) -> None:
        if self.dimension not in DIMENSIONS:
            raise ResultFileError(self.name, f"sweep_dimension must be concurrency or rate, got {self.dimension!r}")

    @property
    def x_label(self) -> str:
        return "request rate (req/s)" if self.dimension == "rate" else "concurrency"


def _rate(value) -> float:
    return math.inf if value in (None, "inf", "Infinity") else float(value)


def _dimension(doc: dict, runs: list[dict]) -> str:
    if doc.get("sweep_dimension"):
        return doc["sweep_dimension"]
    return "rate" if runs and all(math.isfinite(_rate(r.get("request_rate"))) for r in runs) else "concurrency"


def _x(run: dict, dimension: str) -> float | None:
    if dimension == "rate":
        rate = _rate(run.get("request_rate"))
        return rate if math.isfinite(rate) else None
    value = run.get("max_concurrency") or run.get("max_concurrency_observed")
    return None if value is None else float(value)


def from_doc(doc: dict, name: str) -> ResultFile:
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list) or not doc["runs"]:
        raise ResultFileError(name, "not a tandem bench result (no 'runs' list); write one with --save-result")
    runs = doc["runs"]
    dimension = _dimension(doc, runs)
    points = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or "completed" not in run:
            raise ResultFileError(name, f"runs[{i}] has no summary ('completed' is missing)")
        summary = {k: v for k, v in run.items() if k != "requests"}
        points.append(LoadPoint(label=str(run.get("label", f"run {i + 1}")), x=_x(run, dimension), summary=summary,
                                requests=tuple(run.get("requests") or ()), slo_met=run.get("slo_met")))
    repeated = set(runs[0]) if len(runs) == 1 else set()     # a single run's summary is repeated at the top
    skip = {"tool", "runs", "capacity", "metric_definitions", "percentiles", "sweep_dimension", "interrupted"}
    settings = {k: v for k, v in doc.items() if k not in skip and k not in repeated}
    return ResultFile(name=name, settings=settings, dimension=dimension,
                      percentiles=tuple(float(p) for p in doc.get("percentiles") or (50.0, 90.0, 99.0)),
                      points=tuple(points), capacity=doc.get("capacity"), interrupted=bool(doc.get("interrupted")))


def load_result(path: str) -> ResultFile:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise ResultFileError(path, f"cannot read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFileError(path, f"not JSON: {exc}") from None
    return from_doc(doc, path)
