"""Writes every output file of a result under one name: <dir>/<name>.json, .csv, .html, and with
plots a PNG per figure (<name>.png for a sweep's curves, <name>.<figure>.png for the others).
The HTML is drawn from the JSON document just written, so it shows what the file holds.
Returns the paths written."""

from __future__ import annotations

import os

from loadgen.errors import BenchConfigError
from loadgen.report.csv_result import write_csv
from loadgen.report.figure import Figure
from loadgen.report.html import render_html
from loadgen.report.json_result import write_json
from loadgen.report.result_file import from_doc
from loadgen.report.run_figures import run_figures
from loadgen.result import BenchResult


def make_directory(directory: str, flag: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise BenchConfigError(flag, f"cannot create {directory}: {exc.strerror}") from None


def write_pngs(figures: list[Figure], base: str, main_key: str) -> dict[str, str]:
    """{figure key: path}; the figure `main_key` gets <base>.png."""
    from loadgen.report.png_chart import figure_png
    paths = {}
    for figure in figures:
        path = base + ".png" if figure.key == main_key else f"{base}.{figure.key}.png"
        with open(path, "wb") as f:
            f.write(figure_png(figure))
        paths[figure.key] = path
    return paths


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_all(result: BenchResult, directory: str, name: str, plots: bool = True) -> list[str]:
    make_directory(directory, "--result-dir")
    base = os.path.join(directory, name)
    paths = [base + ".json", base + ".csv"]
    doc = from_doc(write_json(result, paths[0]), name)
    write_csv(result, paths[1])
    figures = run_figures(doc)
    pngs = write_pngs(figures, base, "curves") if plots else {}
    paths += list(pngs.values())
    write_text(base + ".html", render_html(doc, figures, {k: os.path.basename(v) for k, v in pngs.items()}))
    paths.append(base + ".html")
    return paths
