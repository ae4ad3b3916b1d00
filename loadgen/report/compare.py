"""Several result files side by side: a label for each run, the load points they share, the
ratio of each metric to the first run's at every shared point, each run's SLO capacity, and the
ways their workloads differ (so unlike is never compared with unlike silently)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from loadgen.errors import BenchConfigError
from loadgen.report.result_file import LoadPoint, ResultFile
from loadgen.report.run_figures import high_percentile

# Fields that describe the server and the client rather than the load; they name the runs.
LABEL_FIELDS = ("model_id", "num_workers", "event_loop", "date")
# (summary key, column title, True when higher is better)
RATIO_METRICS = (("median_ttft_ms", "TTFT p50", False), ("{hi}_ttft_ms", "TTFT {hi}", False),
                 ("median_ttst_ms", "TTST p50", False), ("{hi}_ttst_ms", "TTST {hi}", False),
                 ("median_tpot_ms", "TPOT p50", False), ("{hi}_tpot_ms", "TPOT {hi}", False),
                 ("median_itl_ms", "ITL p50", False), ("{hi}_itl_ms", "ITL {hi}", False),
                 ("median_e2el_ms", "E2E p50", False), ("output_throughput", "output tok/s", True),
                 ("request_throughput", "req/s", True), ("request_goodput", "goodput req/s", True))
LENGTH_TOLERANCE = 0.05     # mean prompt / requested output lengths further apart than this differ


@dataclass(frozen=True)
class Run:
    label: str
    result: ResultFile
    color: int


def _server(settings: dict) -> str:
    url = str(settings.get("base_url") or "")
    return url.split("://", 1)[-1].rstrip("/") or "?"


def default_labels(results: list[ResultFile]) -> list[str]:
    """backend @ server, plus each naming setting whose value differs between the files, plus the
    file name if that still leaves two alike."""
    labels = [f"{r.settings.get('backend', '?')} @ {_server(r.settings)}" for r in results]
    for key in LABEL_FIELDS:
        if len(set(labels)) == len(labels):
            break
        values = [r.settings.get(key) for r in results]
        if len({str(v) for v in values}) > 1:
            labels = [f"{label}, {key}={v}" for label, v in zip(labels, values)]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({os.path.basename(r.name)})" for label, r in zip(labels, results)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def make_runs(results: list[ResultFile], labels: list[str] | None) -> list[Run]:
    if labels is not None and len(labels) != len(results):
        raise BenchConfigError("--label", f"give one label per result file: {len(results)} files, {len(labels)} labels")
    labels = labels or default_labels(results)
    if len(set(labels)) < len(labels):
        raise BenchConfigError("--label", f"labels must differ, got {', '.join(labels)}")
    return [Run(label, r, i) for i, (label, r) in enumerate(zip(labels, results))]


def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def workload(result: ResultFile) -> dict:
    """What the runs' clients sent, as comparable values."""
    s = result.settings
    rows = [r for p in result.points for r in p.requests]
    out = {"dataset": s.get("dataset_name"), "dataset file": s.get("dataset_path"),
           "tokenizer": s.get("tokenizer_id") or "(none: approximate counts)",
           "token counting": s.get("token_count_method"), "ignore_eos": s.get("ignore_eos"),
           "mean prompt tokens": _mean(r.get("prompt_len") for r in rows),
           "mean requested output tokens": _mean(r.get("output_len_requested") for r in rows)}
    for key, value in (s.get("dataset") or {}).items():
        if key not in ("name", "path"):
            out[f"dataset {key}"] = value
    return out


def _differs(key: str, values: list) -> bool:
    if key.startswith("mean "):
        numbers = [v for v in values if v is not None]
        if len(numbers) < 2:
            return False
        return (max(numbers) - min(numbers)) > LENGTH_TOLERANCE * max(abs(v) for v in numbers)
    return len({repr(v) for v in values}) > 1


def workload_differences(runs: list[Run]) -> dict[str, list]:
    """{field: [value per run]} for every workload field on which the runs disagree. A field only
    some files record (written by an older version) is compared among those that do."""
    loads = [workload(r.result) for r in runs]
    keys: list[str] = []
    for w in loads:
        keys += [k for k in w if k not in keys]
    out = {}
    for key in keys:
        values = [w.get(key) for w in loads]
        present = [v for w, v in zip(loads, values) if key in w]
        if len(present) > 1 and _differs(key, present):
            out[key] = values
    if len({r.result.dimension for r in runs}) > 1:
        out["load axis (sweep_dimension)"] = [r.result.dimension for r in runs]
    return out


def points_by_x(result: ResultFile) -> dict[float, LoadPoint]:
    """The point at each axis value (the last one when a capacity search probed a value twice)."""
    return {p.x: p for p in result.points if p.x is not None}


def shared_xs(runs: list[Run]) -> list[float]:
    """Axis values every run measured, on the first run's axis."""
    dimension = runs[0].result.dimension
    sets = [set(points_by_x(r.result)) for r in runs if r.result.dimension == dimension]
    if len(sets) < len(runs):
        return []
    return sorted(set.intersection(*sets)) if sets else []


def ratio_metrics(runs: list[Run]) -> list[tuple[str, str, bool]]:
    percentiles = set(runs[0].result.percentiles)
    for r in runs[1:]:
        percentiles &= set(r.result.percentiles)
    hi = high_percentile(sorted(percentiles))
    return [(key.format(hi=hi), title.format(hi=hi), higher) for key, title, higher in RATIO_METRICS]


def _value(point: LoadPoint, key: str) -> float | None:
    v = point.summary.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def ratio(run_point: LoadPoint, base_point: LoadPoint, key: str) -> float | None:
    """run / base; None when either lacks the metric or the base is 0."""
    a, b = _value(run_point, key), _value(base_point, key)
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratio_rows(runs: list[Run]) -> list[dict]:
    """One row per (other run, shared point): {run, x, label, ratios: {column: ratio}}."""
    base = points_by_x(runs[0].result)
    metrics = ratio_metrics(runs)
    rows = []
    for run in runs[1:]:
        mine = points_by_x(run.result)
        for x in shared_xs(runs):
            rows.append({"run": run.label, "baseline": runs[0].label, "x": x, "label": mine[x].label,
                         "ratios": {title: ratio(mine[x], base[x], key) for key, title, _ in metrics}})
    return rows


def capacity_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        c = run.result.capacity
        if not c:
            continue
        rows.append({"run": run.label, "capacity": c.get("capacity"), "dimension": c.get("dimension"),
                     "slo": c.get("slo"), "percentile": c.get("slo_percentile"), "converged": c.get("converged"),
                     "reached_maximum": c.get("reached_maximum"), "runs": c.get("runs")})
    return rows
