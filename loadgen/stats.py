"""Summary statistics of one distribution, named as vLLM names them."""

from __future__ import annotations

import numpy as np


def percentile_label(p: float) -> str:
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


def summarize(name: str, values_ms, percentiles: tuple[float, ...]) -> dict[str, float | None]:
    """{mean_<name>_ms, median_<name>_ms, std_<name>_ms, p<P>_<name>_ms...}; None when empty."""
    values = np.asarray(values_ms, dtype=float)
    keys = [f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms"]
    keys += [f"{percentile_label(p)}_{name}_ms" for p in percentiles]
    if values.size == 0:
        return dict.fromkeys(keys)
    numbers = [values.mean(), np.median(values), values.std()]
    numbers += list(np.percentile(values, percentiles)) if percentiles else []
    return {key: float(v) for key, v in zip(keys, numbers)}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an interval ending when another starts does not
    overlap it)."""
    events = [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    events.sort(key=lambda e: (e[0], e[1]))
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best
