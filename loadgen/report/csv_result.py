"""The summary as CSV: one row per load point, every scalar metric a column."""

from __future__ import annotations

import csv

from loadgen.report.json_result import spec_fields
from loadgen.result import BenchResult


def summary_rows(result: BenchResult) -> list[dict]:
    rows = []
    for p in result.points:
        row = {**spec_fields(p), "interrupted": p.interrupted}
        for key, value in p.summary.items():
            if isinstance(value, dict):
                value = ";".join(f"{c}:{n}" for c, n in value.items())
            elif isinstance(value, list):
                value = " | ".join(value)
            row[key] = value
        if p.slo_met is not None:
            row["slo_met"] = p.slo_met
        rows.append(row)
    return rows


def write_csv(result: BenchResult, path: str) -> None:
    rows = summary_rows(result)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
