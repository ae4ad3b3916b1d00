"""What a report figure shows, independent of how it is drawn: panels of named series. The same
Figure becomes inline SVG in the HTML page (svg_chart.py) and a PNG (png_chart.py), so the page
and the picture never disagree. Each panel has its own y axis: curves of different units never
share one."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Okabe-Ito, then a few more: distinguishable for colour-blind readers and in grey print.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
           "#882255", "#44AA99")
DASHES = ("", "6 3", "2 2", "8 3 2 3")           # SVG stroke-dasharray; matplotlib gets the same
MARKERS = ("circle", "square", "triangle", "diamond")


@dataclass(frozen=True)
class Series:
    name: str                          # shown in the legend; series of one name toggle together
    xs: tuple[float, ...]
    ys: tuple[float | None, ...]       # None leaves a gap
    color: int = 0                     # index into PALETTE
    dash: int = 0                      # index into DASHES
    marker: bool = True                # draw a marker at each point (few points: curves of a sweep)
    step: bool = False                 # a step function (binned time series): y holds until the next x

    def __post_init__(self) -> None:
        if len(self.xs) != len(self.ys):
            raise ValueError(f"series {self.name!r}: {len(self.xs)} x values for {len(self.ys)} y values")

    def points(self) -> list[tuple[float, float]]:
        return [(x, y) for x, y in zip(self.xs, self.ys)
                if y is not None and math.isfinite(x) and math.isfinite(y)]


@dataclass(frozen=True)
class Panel:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    x_log: bool = False
    y_max: float | None = None         # fixed top of the y axis (1.0 for a CDF), else from the data

    @property
    def empty(self) -> bool:
        return not any(s.points() for s in self.series)


@dataclass(frozen=True)
class Figure:
    key: str                           # unique in a report; names the PNG file
    title: str
    panels: tuple[Panel, ...]
    columns: int = 2
    note: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", self.key):
            raise ValueError(f"figure key {self.key!r} must be lower-case letters, digits, '-', '_', '.'")

    def legend(self) -> list[Series]:
        """One entry per series name, first occurrence's style."""
        seen: dict[str, Series] = {}
        for panel in self.panels:
            for s in panel.series:
                seen.setdefault(s.name, s)
        return list(seen.values())


def wants_log_x(xs) -> bool:
    positive = [x for x in xs if x > 0 and math.isfinite(x)]
    return len(positive) >= 3 and max(positive) / min(positive) >= 16


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
