"""A Figure as a PNG (matplotlib, Agg backend: no display needed), drawn from the same panels and
series as the page's SVG: one axis per panel, the page's colours, dashes and markers."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import matplotlib.ticker  # noqa: E402

from loadgen.report.figure import DASHES, MARKERS, PALETTE, Figure  # noqa: E402

_MPL_MARKERS = {"circle": "o", "square": "s", "triangle": "^", "diamond": "D"}


def _dashes(index: int):
    pattern = DASHES[index % len(DASHES)]
    return "-" if not pattern else (0, tuple(float(v) for v in pattern.split()))


def figure_png(figure: Figure, dpi: int = 90) -> bytes:
    columns = max(1, min(figure.columns, len(figure.panels)))
    rows = math.ceil(len(figure.panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows + 0.5), constrained_layout=True,
                             squeeze=False)
    for ax, panel in zip(axes.flat, figure.panels):
        for s in panel.series:
            pts = [(x, float("nan") if y is None else y) for x, y in zip(s.xs, s.ys)]
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = dict(color=PALETTE[s.color % len(PALETTE)], linestyle=_dashes(s.dash), linewidth=1.6, label=s.name)
            if s.step:
                ax.step(xs, ys, where="post", **style)
            else:
                marker = _MPL_MARKERS[MARKERS[s.color % len(MARKERS)]] if s.marker else None
                ax.plot(xs, ys, marker=marker, markersize=4, **style)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.x_label)
        ax.set_ylabel(panel.y_label)
        ax.grid(True, alpha=0.3)
        if panel.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
        else:
            ax.set_ylim(bottom=0 if all(y >= 0 for s in panel.series for _, y in s.points()) else None,
                        top=panel.y_max)
            if panel.x_log and all(x > 0 for s in panel.series for x, _ in s.points()):
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            if len(panel.series) > 1:
                ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(figure.panels):]:
        ax.set_visible(False)
    fig.suptitle(figure.title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
