"""A self-contained HTML report: settings, the sweep figure embedded as base64 PNG, the summary
table, each point's full metrics and errors, and the metric definitions. No network assets."""

from __future__ import annotations

import base64
import html

from loadgen.metric_definitions import definitions
from loadgen.report.console import _num
from loadgen.result import BenchResult
from loadgen.stats import percentile_label

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;
margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.bad{color:#b00}
img{max-width:100%;border:1px solid #ddd}code{background:#f6f6f6;padding:1px 4px}"""


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(result: BenchResult, png: bytes | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tandem bench report</title>"
             f"<style>{STYLE}</style></head><body><h1>tandem bench</h1>"]
    if result.interrupted:
        parts.append("<p class='bad'>Interrupted: results cover what ran before Ctrl-C.</p>")
    parts.append("<h2>Settings</h2>" + _table(["setting", "value"],
                                               [[k, v] for k, v in result.settings.items()]))
    if png:
        parts.append("<h2>Curves</h2><img alt='sweep curves' src='data:image/png;base64,"
                     + base64.b64encode(png).decode() + "'>")
    if result.capacity is not None:
        parts.append("<h2>Capacity search</h2>" + _table(["field", "value"],
                                                         [[k, v] for k, v in result.capacity.items()]))
    parts.append("<h2>Summary</h2>" + _summary_table(result))
    for point in result.points:
        s = point.summary
        if s["errors_by_code"] or s.get("client_warnings") or point.interrupted:
            parts.append(f"<h3>{html.escape(point.label)}</h3>")
        if point.interrupted:
            parts.append("<p class='bad'>Interrupted by Ctrl-C.</p>")
        if s["errors_by_code"]:
            errors = ", ".join(f"{c} x{n}" for c, n in s["errors_by_code"].items())
            parts.append(f"<p class='bad'>Errors: {html.escape(errors)}</p>")
        for warning in s.get("client_warnings", ()):
            parts.append(f"<p class='bad'>Client warning: {html.escape(warning)}</p>")
    parts.append("<h2>All metrics</h2>" + _metrics_table(result))
    parts.append("<h2>Metric definitions</h2>" + _table(["metric", "definition"],
                                                         [[k, v] for k, v in definitions().items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _metrics_table(result: BenchResult) -> str:
    """Every scalar metric (rows) of every point (columns)."""
    keys: list[str] = []
    for p in result.points:
        keys += [k for k, v in p.summary.items() if not isinstance(v, (dict, list)) and k not in keys]
    rows = [[k] + [_num(p.summary.get(k)) for p in result.points] for k in keys]
    return _table(["metric"] + [p.label for p in result.points], rows)


def _summary_table(result: BenchResult) -> str:
    hi = percentile_label(max(result.percentiles)) if result.percentiles else "median"
    header = ["point", "completed", "failed", "req/s", "output tok/s", "TTFT p50", f"TTFT {hi}", "TPOT p50",
              f"TPOT {hi}", "ITL p50", f"ITL {hi}", "E2E p50", f"queue {hi}", "goodput fraction", "SLO met"]
    rows = []
    for p in result.points:
        s = p.summary
        rows.append([p.label, s["completed"], s["failed"], _num(s["request_throughput"]), _num(s["output_throughput"]),
                     _num(s["median_ttft_ms"]), _num(s.get(f"{hi}_ttft_ms")), _num(s["median_tpot_ms"]),
                     _num(s.get(f"{hi}_tpot_ms")), _num(s["median_itl_ms"]), _num(s.get(f"{hi}_itl_ms")),
                     _num(s["median_e2el_ms"]), _num(s.get(f"{hi}_queue_ms")), _num(s["goodput_fraction"]),
                     "-" if p.slo_met is None else p.slo_met])
    return _table(header, rows)


def write_html(result: BenchResult, png: bytes | None, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(result, png))
