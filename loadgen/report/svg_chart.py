"""A Panel as inline SVG: axes with round ticks, one <g class="series"> per series (its line, its
markers, and its points in data-points for the page's hover script), nothing fetched. Drawn in a
fixed viewBox and scaled by CSS, so it is as sharp on paper as on screen."""

from __future__ import annotations

import html
import json
import math

from loadgen.report.figure import DASHES, MARKERS, PALETTE, Panel, Series
from loadgen.report.request_timeline import nice_step

WIDTH, HEIGHT = 460, 290
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 30, 46


def tick_text(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.4g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.4g}k"
    return f"{v:.4g}"


class Scale:
    """Data -> pixels along one axis, linear or log, over round bounds."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False,
                 fixed_hi: float | None = None, from_zero: bool = False) -> None:
        self.log = log and lo > 0
        if self.log:
            base = 10 if hi / lo > 1024 else 2
            self.base = base
            self.lo = base ** math.floor(math.log(lo, base) + 1e-9)
            self.hi = base ** math.ceil(math.log(hi, base) - 1e-9)
            if self.hi <= self.lo:
                self.hi = self.lo * base
        else:
            lo = min(lo, 0.0) if from_zero else lo
            hi = fixed_hi if fixed_hi is not None else hi
            if hi <= lo:
                hi, lo = (lo + 1, lo - 1) if not from_zero else (max(lo, 0) + 1, lo)
            self.step = nice_step((hi - lo) / 5)
            self.lo = lo if from_zero or fixed_hi is not None else math.floor(lo / self.step) * self.step
            self.hi = hi if fixed_hi is not None else math.ceil(hi / self.step) * self.step
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        if self.log:
            f = (math.log(v) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.p0 + f * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.log:
            out, v = [], self.lo
            while v <= self.hi * (1 + 1e-9):
                out.append(v)
                v *= self.base
            return out
        first = math.ceil(self.lo / self.step - 1e-9)
        return [round(k * self.step, 12) for k in range(first, int(math.floor(self.hi / self.step + 1e-9)) + 1)]


def _marker(shape: str, x: float, y: float, color: str) -> str:
    if shape == "square":
        return f"<rect x='{x - 3:.1f}' y='{y - 3:.1f}' width='6' height='6' fill='{color}'/>"
    if shape == "triangle":
        return f"<path d='M{x:.1f} {y - 4:.1f}L{x + 3.6:.1f} {y + 2.6:.1f}L{x - 3.6:.1f} {y + 2.6:.1f}Z' fill='{color}'/>"
    if shape == "diamond":
        return f"<path d='M{x:.1f} {y - 4:.1f}L{x + 4:.1f} {y:.1f}L{x:.1f} {y + 4:.1f}L{x - 4:.1f} {y:.1f}Z' fill='{color}'/>"
    return f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3.2' fill='{color}'/>"


def _segments(series: Series) -> list[list[tuple[float, float]]]:
    """Runs of consecutive drawable points (a None y breaks the line)."""
    out, current = [], []
    for x, y in zip(series.xs, series.ys):
        if y is None or not math.isfinite(x) or not math.isfinite(y):
            if current:
                out.append(current)
            current = []
        else:
            current.append((x, y))
    if current:
        out.append(current)
    return out


def _series_svg(series: Series, sx: Scale, sy: Scale) -> str:
    color = PALETTE[series.color % len(PALETTE)]
    dash = DASHES[series.dash % len(DASHES)]
    paths = []
    for seg in _segments(series):
        pts = [(sx(x), sy(y)) for x, y in seg]
        d = f"M{pts[0][0]:.1f} {pts[0][1]:.1f}"
        for (px, py), (qx, qy) in zip(pts, pts[1:]):
            d += f"H{qx:.1f}V{qy:.1f}" if series.step else f"L{qx:.1f} {qy:.1f}"
        paths.append(d)
    dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
    body = "".join(f"<path d='{d}' fill='none' stroke='{color}' stroke-width='1.8'{dash_attr}/>" for d in paths)
    points = series.points()
    if series.marker:
        shape = MARKERS[series.color % len(MARKERS)]
        body += "".join(_marker(shape, sx(x), sy(y), color) for x, y in points)
    data = json.dumps([[round(sx(x), 1), round(sy(y), 1), float(f"{x:.6g}"), float(f"{y:.6g}")] for x, y in points],
                      separators=(",", ":"))
    name = html.escape(series.name, quote=True)
    return f"<g class='series' data-series='{name}' data-points='{data}'>{body}</g>"


def panel_svg(panel: Panel, uid: str) -> str:
    """uid: unique in the page (names the panel's clip path)."""
    title = html.escape(panel.title)
    parts = [f"<svg class='panel' viewBox='0 0 {WIDTH} {HEIGHT}' role='img'>"
             f"<title>{title}</title>",
             f"<text class='ptitle' x='{WIDTH / 2}' y='18' text-anchor='middle'>{title}</text>"]
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    points = [p for s in panel.series for p in s.points()]
    if not points:
        parts.append(f"<text class='nodata' x='{WIDTH / 2}' y='{HEIGHT / 2}' text-anchor='middle'>no data</text></svg>")
        return "".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    log_x = panel.x_log and min(xs) > 0
    sx = Scale(min(xs), max(xs), x0, x1, log=log_x)
    sy = Scale(min(ys), max(ys) * 1.04, y0, y1, fixed_hi=panel.y_max, from_zero=min(ys) >= 0)
    parts.append(f"<rect class='plot' x='{x0}' y='{y1}' width='{x1 - x0}' height='{y0 - y1}'/>")
    for v in sx.ticks():
        px = sx(v)
        parts.append(f"<line class='grid' x1='{px:.1f}' x2='{px:.1f}' y1='{y1}' y2='{y0}'/>"
                     f"<text class='tick' x='{px:.1f}' y='{y0 + 15}' text-anchor='middle'>{tick_text(v)}</text>")
    for v in sy.ticks():
        py = sy(v)
        parts.append(f"<line class='grid' x1='{x0}' x2='{x1}' y1='{py:.1f}' y2='{py:.1f}'/>"
                     f"<text class='tick' x='{x0 - 5}' y='{py + 4:.1f}' text-anchor='end'>{tick_text(v)}</text>")
    parts.append(f"<text class='alabel' x='{(x0 + x1) / 2}' y='{HEIGHT - 8}' text-anchor='middle'>"
                 f"{html.escape(panel.x_label)}</text>"
                 f"<text class='alabel' transform='translate(14 {(y0 + y1) / 2}) rotate(-90)' text-anchor='middle'>"
                 f"{html.escape(panel.y_label)}</text>")
    parts.append(f"<clipPath id='clip-{uid}'><rect x='{x0 - 5}' y='{y1 - 5}' width='{x1 - x0 + 10}' "
                 f"height='{y0 - y1 + 10}'/></clipPath><g clip-path='url(#clip-{uid})'>")
    parts += [_series_svg(s, sx, sy) for s in panel.series]
    parts.append("</g><circle class='hover' r='5' cx='-10' cy='-10'/></svg>")
    return "".join(parts)
