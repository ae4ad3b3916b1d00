"""The figures of one result file: its curves against concurrency or rate (latency percentiles,
and throughput, goodput and failures each on its own axis), the distributions of its points
(CDFs of TTFT, TPOT, ITL, E2E) and each point's run over time (requests in flight, output
tokens/s, errors/s). compare.py overlays several files with the same builders."""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.report.figure import Figure, Panel, Series, slug, wants_log_x
from loadgen.report.request_timeline import DISTRIBUTION_METRICS, cdf_points, distribution, spans, time_series
from loadgen.report.result_file import LoadPoint, ResultFile
from loadgen.stats import percentile_label

LATENCY_METRICS = (("ttft", "TTFT"), ("ttst", "TTST"), ("tpot", "TPOT"), ("itl", "ITL"))
# (summary key, panel title, y label, colour of a single run's curve); each its own panel so no
# curve hides another.
RATE_METRICS = (("output_throughput", "Output throughput", "tokens/s", 2),
                ("request_throughput", "Request throughput", "requests/s", 3),
                ("request_goodput", "Goodput", "requests/s meeting --goodput", 4),
                ("goodput_fraction", "Goodput fraction", "share meeting --goodput", 5),
                ("failed_per_s", "Failed requests", "failed requests/s", 1))


def high_percentile(percentiles) -> str:
    """p99 when the runs have it (the usual tail), else their highest."""
    if 99.0 in percentiles or not percentiles:
        return "p99"
    return percentile_label(max(percentiles))


def point_value(point: LoadPoint, key: str) -> float | None:
    s = point.summary
    if key == "failed_per_s":
        duration = s.get("duration") or 0
        return s.get("failed", 0) / duration if duration > 0 else None
    value = s.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Curve:
    """One line of a curve panel: the summary field `key` of each point, joined."""

    name: str
    points: tuple[LoadPoint, ...]
    key: str
    color: int = 0
    dash: int = 0

    def series(self) -> Series:
        return Series(self.name, tuple(p.x for p in self.points), tuple(point_value(p, self.key) for p in self.points),
                      color=self.color, dash=self.dash)


def on_axis(points) -> tuple[LoadPoint, ...]:
    """The points that have a place on the axis, in axis order."""
    return tuple(sorted((p for p in points if p.x is not None), key=lambda p: p.x))


def rate_panels(x_label: str, runs: list[tuple[str | None, tuple[LoadPoint, ...], int]], x_log: bool) -> list[Panel]:
    """Throughput (tokens/s, requests/s), then goodput when some run measured it and failures when
    some run had them. runs: (series name, or None to name it by the metric; points; colour)."""
    panels = []
    for key, title, y_label, own_color in RATE_METRICS:
        curves = [Curve(name or title.lower(), points, key, color if name else own_color)
                  for name, points, color in runs]
        panel = Panel(title, x_label, y_label, tuple(c.series() for c in curves), x_log=x_log)
        values = [y for s in panel.series for _, y in s.points()]
        if key in ("request_goodput", "goodput_fraction") and not values or key == "failed_per_s" and not any(values):
            continue
        panels.append(Panel(panel.title, x_label, y_label, panel.series, x_log=x_log,
                            y_max=1.0 if key == "goodput_fraction" else None))
    return panels


def curves_figure(result: ResultFile) -> Figure | None:
    points = on_axis(result.points)
    if len(points) < 2:
        return None
    hi = high_percentile(result.percentiles)
    x_log = result.dimension == "concurrency" and wants_log_x([p.x for p in points])
    panels = [Panel(f"{title} (ms)", result.x_label, "ms",
                    (Curve("p50", points, f"median_{metric}_ms", 0, 0).series(),
                     Curve(hi, points, f"{hi}_{metric}_ms", 1, 1).series()), x_log=x_log)
              for metric, title in LATENCY_METRICS]
    panels += rate_panels(result.x_label, [(None, points, 0)], x_log)
    return Figure("curves", f"Latency and throughput against {result.x_label}", tuple(panels), columns=3,
                  note="Each panel has its own axis. Latencies over successful requests; failed requests count "
                       "against goodput.")


def cdf_figure(key: str, title: str, named_rows: list[tuple[str, int, tuple[dict, ...]]]) -> Figure:
    """named_rows: (series name, colour, request rows) per distribution to draw."""
    panels = []
    for metric, metric_title in DISTRIBUTION_METRICS:
        series = []
        for name, color, rows in named_rows:
            xs, fractions = cdf_points(distribution(rows, metric))
            series.append(Series(name, tuple(float(x) for x in xs), tuple(float(f) for f in fractions),
                                 color=color, marker=False))
        panels.append(Panel(f"{metric_title} CDF", f"{metric_title} (ms)", "fraction of requests <= x",
                            tuple(series), y_max=1.0))
    return Figure(key, title, tuple(panels), columns=2,
                  note="Successful requests; ITL pools every gap between two chunks of a request.")


def timeline_figure(key: str, title: str, rows: tuple[dict, ...]) -> Figure | None:
    ts = time_series(spans(rows))
    if ts is None:
        return None
    xs = tuple(float(x) for x in ts.starts) + (float(ts.starts[-1] + ts.bin_s),)

    def steps(values):
        return tuple(float(v) for v in values) + (float(values[-1]),)
    axis = "seconds from the first scheduled request"
    panels = (Panel("Requests in flight", axis, "requests", (Series("in flight", xs, steps(ts.in_flight), 0,
                                                                     marker=False, step=True),)),
              Panel("Output tokens/s", axis, "tokens/s", (Series("output tok/s", xs, steps(ts.output_tokens_per_s),
                                                                  2, marker=False, step=True),)),
              Panel("Errors/s", axis, "failed requests/s", (Series("errors/s", xs, steps(ts.errors_per_s), 1,
                                                                    marker=False, step=True),)))
    failed = sum(1 for r in rows if r.get("error") and not r.get("interrupted"))
    return Figure(key, title, panels, columns=3,
                  note=f"Bins of {ts.bin_s:g} s; in flight is the mean over each bin; a request fails at its end. "
                       f"{failed} failed request(s) in this run.")


def run_figures(result: ResultFile) -> list[Figure]:
    figures = []
    curves = curves_figure(result)
    if curves is not None:
        figures.append(curves)
    named = [(p.label, i, p.requests) for i, p in enumerate(result.points) if p.requests]
    if named:
        figures.append(cdf_figure("cdf", "Distributions", named))
    for i, p in enumerate(result.points):
        fig = timeline_figure(f"timeline-{i + 1}-{slug(p.label)}", f"Over time: {p.label}", p.requests)
        if fig is not None:
            figures.append(fig)
    return figures
