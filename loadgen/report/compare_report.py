"""`tandem bench compare` output: one HTML page overlaying the runs (curves against concurrency or
rate, distributions at each shared point), the ratio table, SLO capacities, a warning when the
workloads differ, and each run's own summary and time series; compare.json with the same
numbers; a PNG per figure."""

from __future__ import annotations

import json
import math
import os

from loadgen.report.compare import (Run, capacity_rows, make_runs, points_by_x, ratio_metrics, ratio_rows,
                                    shared_xs, workload_differences)
from loadgen.report.figure import Figure, Panel, slug, wants_log_x
from loadgen.report.files import make_directory, write_pngs, write_text
from loadgen.report.html import point_notes, summary_table
from loadgen.report.page import esc, figure_html, page, table
from loadgen.report.result_file import ResultFile
from loadgen.report.run_figures import (LATENCY_METRICS, Curve, cdf_figure, high_percentile, on_axis, rate_panels,
                                        timeline_figure)

NAME = "compare"


def curves_figure(runs: list[Run]) -> Figure | None:
    """The runs on one load axis overlaid: p50 and high-percentile latencies, throughput, goodput."""
    result = runs[0].result
    lines = [(run, on_axis(run.result.points)) for run in runs]
    if not any(points for _, points in lines):
        return None
    hi = high_percentile(sorted(set.intersection(*(set(r.result.percentiles) for r in runs))))
    xs = [p.x for _, points in lines for p in points]
    x_log = result.dimension == "concurrency" and wants_log_x(xs)
    panels = []
    for metric, title in LATENCY_METRICS:
        for stat, stat_title in (("median", "p50"), (hi, hi)):
            curves = [Curve(run.label, points, f"{stat}_{metric}_ms", run.color) for run, points in lines]
            panels.append(Panel(f"{title} {stat_title} (ms)", result.x_label, "ms",
                                tuple(c.series() for c in curves), x_log=x_log))
    panels += rate_panels(result.x_label, [(run.label, points, run.color) for run, points in lines], x_log)
    return Figure(f"curves-{result.dimension}", f"Runs against {result.x_label}", tuple(panels), columns=2,
                  note="Each panel has its own axis. Latencies over successful requests; failed requests count "
                       "against goodput.")


def comparison_figures(runs: list[Run]) -> list[Figure]:
    figures = []
    for dimension in dict.fromkeys(r.result.dimension for r in runs):
        fig = curves_figure([r for r in runs if r.result.dimension == dimension])
        if fig is not None:
            figures.append(fig)
    xs = shared_xs(runs)
    for x in xs:
        at = [(run, points_by_x(run.result)[x]) for run in runs]
        label = at[0][1].label
        figures.append(cdf_figure(f"cdf-{slug(label)}", f"Distributions at {label}",
                                  [(run.label, run.color, p.requests) for run, p in at]))
    if not xs:
        for i, run in enumerate(runs):
            named = [(p.label, j, p.requests) for j, p in enumerate(run.result.points) if p.requests]
            if named:
                figures.append(cdf_figure(f"run{i + 1}-cdf", f"Distributions: {run.label}", named))
    return figures


def run_timelines(index: int, run: Run) -> list[Figure]:
    figures = []
    for j, p in enumerate(run.result.points):
        fig = timeline_figure(f"run{index + 1}-timeline-{j + 1}-{slug(p.label)}", f"{run.label}: {p.label} over time",
                              p.requests)
        if fig is not None:
            figures.append(fig)
    return figures


def _ratio_cell(value: float | None, higher_is_better: bool) -> tuple[str, str]:
    if value is None or not math.isfinite(value):
        return "-", ""
    better = value > 1.05 if higher_is_better else value < 1 / 1.05
    worse = value < 1 / 1.05 if higher_is_better else value > 1.05
    return f"{value:.2f}x", "good" if better else "bad" if worse else ""


def ratio_section(runs: list[Run]) -> str:
    if len(runs) < 2:
        return ""
    rows = ratio_rows(runs)
    if not rows:
        return ("<h2>Ratios</h2><p class='bad'>The runs share no load point (same concurrency or rate): no ratio "
                "to show.</p>")
    metrics = ratio_metrics(runs)
    out = [f"<h2>Ratios to {esc(runs[0].label)}</h2><p class='note'>Each run's value / the first run's at the "
           "same load point; green is better, red worse (by more than 5%): lower for latency, higher for "
           "throughput.</p>"]
    for run in runs[1:]:
        mine = [r for r in rows if r["run"] == run.label]
        body = [[r["label"]] + [_ratio_cell(r["ratios"][title], higher) for _, title, higher in metrics] for r in mine]
        out.append(f"<h3>{esc(run.label)}</h3>" + table(["point"] + [t for _, t, _ in metrics], body))
    return "".join(out)


def workload_section(differences: dict[str, list], runs: list[Run]) -> str:
    if not differences:
        return "<p class='good'>Same workload: dataset, lengths, tokenizer and token counting agree.</p>"
    rows = [[key] + ["-" if v is None else f"{v:.1f}" if isinstance(v, float) else v for v in values]
            for key, values in differences.items()]
    return ("<div class='warn' role='alert'><strong>Warning: these runs differ in workload</strong> "
            f"({esc(', '.join(differences))}). Their curves and ratios compare unlike with unlike."
            + table(["differs"] + [r.label for r in runs], rows) + "</div>")


def capacity_section(runs: list[Run]) -> str:
    rows = capacity_rows(runs)
    if not rows:
        return ""
    body = [[r["run"], r["capacity"], r["dimension"], ", ".join(f"{k} <= {v:g} ms" for k, v in (r["slo"] or {}).items()),
             f"p{r['percentile']:g}" if r["percentile"] is not None else "-",
             "yes" if r["converged"] else ("no", "bad"),
             "yes" if r["reached_maximum"] else "no", r["runs"]] for r in rows]
    return "<h2>SLO capacity</h2>" + table(["run", "capacity", "dimension", "SLO", "percentile", "converged",
                                             "the maximum tried", "probes"], body)


def runs_table(runs: list[Run]) -> str:
    body = [[r.label, r.result.name, r.result.settings.get("backend"), r.result.settings.get("base_url"),
             r.result.settings.get("model_id"), r.result.dimension, len(r.result.points),
             r.result.settings.get("date")] for r in runs]
    return table(["run", "file", "backend", "server", "model", "load axis", "points", "date"], body)


def render(runs: list[Run], figures: list[Figure], per_run: list[list[Figure]], differences: dict,
           png_names: dict[str, str]) -> str:
    parts = ["<h2>Runs</h2>" + runs_table(runs), workload_section(differences, runs), ratio_section(runs),
             capacity_section(runs)]
    if figures:
        parts.append("<h2>Overlaid</h2><p class='note'>Hover a curve for its values; click a legend entry to "
                     "hide or show that run.</p>")
        parts += [figure_html(f, png_names.get(f.key)) for f in figures]
    for run, timelines in zip(runs, per_run):
        parts.append(f"<h2>{esc(run.label)}</h2><p class='note'>{esc(run.result.name)}</p>" + summary_table(run.result))
        parts += point_notes(run.result)
        parts += [figure_html(f, png_names.get(f.key)) for f in timelines]
    return page("tandem bench compare", parts)


def write_compare(results: list[ResultFile], out_dir: str, labels: list[str] | None = None,
                  plots: bool = True) -> tuple[list[str], dict[str, list]]:
    """Writes compare.html, compare.json and (with plots) a PNG per figure under out_dir.
    Returns the paths written and the workload differences."""
    runs = make_runs(results, labels)
    make_directory(out_dir, "--out")
    differences = workload_differences(runs)
    figures = comparison_figures(runs)
    per_run = [run_timelines(i, run) for i, run in enumerate(runs)]
    base = os.path.join(out_dir, NAME)
    all_figures = figures + [f for fs in per_run for f in fs]
    pngs = write_pngs(all_figures, base, main_key="") if plots else {}
    doc = {"tool": "tandem bench compare", "baseline": runs[0].label,
           "runs": [{"label": r.label, "file": r.result.name, "settings": r.result.settings} for r in runs],
           "workload_differences": differences, "ratios": ratio_rows(runs), "capacity": capacity_rows(runs)}
    paths = [base + ".json"]
    write_text(paths[0], json.dumps(doc, indent=1, default=str))
    paths += list(pngs.values())
    write_text(base + ".html", render(runs, figures, per_run, differences,
                                      {k: os.path.basename(v) for k, v in pngs.items()}))
    paths.append(base + ".html")
    return paths, differences
