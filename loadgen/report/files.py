"""Writes every output file of a result under one name: <dir>/<name>.json, .csv, .png (sweeps),
.html. Returns the paths written."""

from __future__ import annotations

import os

from loadgen.errors import BenchConfigError
from loadgen.report.csv_result import write_csv
from loadgen.report.html import write_html
from loadgen.report.json_result import write_json
from loadgen.result import BenchResult


def write_all(result: BenchResult, directory: str, name: str, plots: bool = True) -> list[str]:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise BenchConfigError("--result-dir", f"cannot create {directory}: {exc.strerror}") from None
    base = os.path.join(directory, name)
    paths = [base + ".json", base + ".csv"]
    write_json(result, paths[0])
    write_csv(result, paths[1])
    png = None
    if plots and len(result.points) > 1 and result.sweep_dimension:
        from loadgen.report.plots import write_sweep_png
        png = write_sweep_png(result, base + ".png")
        paths.append(base + ".png")
    write_html(result, png, base + ".html")
    paths.append(base + ".html")
    return paths
