"""PNG curves of a sweep (matplotlib, Agg backend: no display needed): TTFT, TPOT and ITL at the
median and the highest chosen percentile, and throughput, against concurrency or rate."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import matplotlib.ticker  # noqa: E402

from loadgen.result import BenchResult  # noqa: E402
from loadgen.stats import percentile_label  # noqa: E402


def sweep_figure_png(result: BenchResult) -> bytes:
    """One figure for the whole sweep, as PNG bytes."""
    points = sorted(result.points, key=result.x_value)
    xs = [result.x_value(p) for p in points]
    hi = percentile_label(max(result.percentiles)) if result.percentiles else None
    x_label = "request rate (req/s)" if result.sweep_dimension == "rate" else "concurrency"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for ax, (metric, title) in zip(axes.flat[:3], (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"))):
        for stat, style in (("median", "o-"), (hi, "s--")):
            if stat is None:
                continue
            ys = [p.summary.get(f"{stat}_{metric}_ms") for p in points]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], style, label=stat)
        ax.set_title(f"{title} (ms)")
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax = axes.flat[3]
    ax.plot(xs, [p.summary["output_throughput"] for p in points], "o-", color="tab:green", label="output tok/s")
    ax.set_ylabel("output tokens/s")
    ax.set_xlabel(x_label)
    ax.set_title("Throughput")
    ax.grid(True, alpha=0.3)
    twin = ax.twinx()
    twin.plot(xs, [p.summary["request_throughput"] for p in points], "s--", color="tab:purple", label="req/s")
    twin.set_ylabel("requests/s")
    ax.legend(loc="upper left")
    twin.legend(loc="lower right")
    if result.sweep_dimension == "concurrency" and xs and max(xs) / max(min(xs), 1) >= 16:
        for a in axes.flat:
            a.set_xscale("log", base=2)
            a.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    fig.suptitle(f"{result.settings.get('backend')} {result.settings.get('model_id') or ''} - "
                 f"{len(points)} points")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def write_sweep_png(result: BenchResult, path: str) -> bytes:
    png = sweep_figure_png(result)
    with open(path, "wb") as f:
        f.write(png)
    return png
