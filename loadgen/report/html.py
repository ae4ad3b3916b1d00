"""The report of one result as a self-contained HTML page: settings, the figures (curves,
distributions, each point over time) drawn inline as interactive SVG, the capacity search, the
summary table, each point's errors and warnings, all metrics, and the metric definitions."""

from __future__ import annotations

from loadgen.metric_definitions import definitions
from loadgen.report.console import _num
from loadgen.report.figure import Figure
from loadgen.report.page import esc, figure_html, page, table
from loadgen.report.result_file import ResultFile
from loadgen.report.run_figures import high_percentile


def settings_table(settings: dict) -> str:
    return table(["setting", "value"], [[k, v] for k, v in settings.items()])


def capacity_table(capacity: dict) -> str:
    return table(["field", "value"], [[k, v] for k, v in capacity.items()])


def summary_table(result: ResultFile) -> str:
    hi = high_percentile(result.percentiles)
    header = ["point", "completed", "failed", "req/s", "output tok/s", "TTFT p50", f"TTFT {hi}", "TPOT p50",
              f"TPOT {hi}", "ITL p50", f"ITL {hi}", "E2E p50", f"queue {hi}", "goodput fraction", "SLO met"]
    rows = []
    for p in result.points:
        s = p.summary
        rows.append([p.label, s["completed"], (s["failed"], "bad" if s["failed"] else ""),
                     _num(s["request_throughput"]), _num(s["output_throughput"]), _num(s["median_ttft_ms"]),
                     _num(s.get(f"{hi}_ttft_ms")), _num(s["median_tpot_ms"]), _num(s.get(f"{hi}_tpot_ms")),
                     _num(s["median_itl_ms"]), _num(s.get(f"{hi}_itl_ms")), _num(s["median_e2el_ms"]),
                     _num(s.get(f"{hi}_queue_ms")), _num(s.get("goodput_fraction")),
                     "-" if p.slo_met is None else p.slo_met])
    return table(header, rows)


def point_notes(result: ResultFile) -> list[str]:
    parts = []
    for point in result.points:
        s = point.summary
        errors, warnings = s.get("errors_by_code") or {}, s.get("client_warnings") or ()
        if not (errors or warnings or s.get("interrupted")):
            continue
        parts.append(f"<h3>{esc(point.label)}</h3>")
        if s.get("interrupted"):
            parts.append("<p class='bad'>Interrupted by Ctrl-C.</p>")
        if errors:
            parts.append(f"<p class='bad'>Errors: {esc(', '.join(f'{c} x{n}' for c, n in errors.items()))}</p>")
        parts += [f"<p class='bad'>Client warning: {esc(w)}</p>" for w in warnings]
    return parts


def metrics_table(result: ResultFile) -> str:
    """Every scalar metric (rows) of every point (columns)."""
    keys: list[str] = []
    for p in result.points:
        keys += [k for k, v in p.summary.items() if not isinstance(v, (dict, list)) and k not in keys]
    return table(["metric"] + [p.label for p in result.points],
                 [[k] + [_num(p.summary.get(k)) for p in result.points] for k in keys])


def render_html(result: ResultFile, figures: list[Figure], png_names: dict[str, str] | None = None) -> str:
    png_names = png_names or {}
    parts = []
    if result.interrupted:
        parts.append("<p class='bad'>Interrupted: results cover what ran before Ctrl-C.</p>")
    parts.append("<h2>Settings</h2>" + settings_table(result.settings))
    parts.append("<h2>Summary</h2>" + summary_table(result))
    if result.capacity is not None:
        parts.append("<h2>Capacity search</h2>" + capacity_table(result.capacity))
    parts += point_notes(result)
    if figures:
        parts.append("<h2>Figures</h2><p class='note'>Hover a curve for its values; click a legend entry to hide "
                     "or show its series.</p>")
        parts += [figure_html(f, png_names.get(f.key)) for f in figures]
    parts.append("<h2>All metrics</h2>" + metrics_table(result))
    parts.append("<h2>Metric definitions</h2>" + table(["metric", "definition"],
                                                        [[k, v] for k, v in definitions().items()]))
    return page("tandem bench", parts)
