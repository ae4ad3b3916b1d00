"""The --save-result JSON: settings, metric definitions, one summary per point (vLLM's field
names where the meaning matches: mean_ttft_ms, p99_itl_ms, output_throughput, completed, ...)
with its per-request records. A single-point result also repeats its summary at the top level,
where vLLM's tooling looks for it.

Each request row holds what the reports redraw the run from: started_s / sent_s / end_s (seconds
from the point's first scheduled request: in flight from started to end), ttft_ms and itls_ms
(each chunk's arrival), and chunk_tokens where the protocol counts tokens per chunk. Files written
before started_s / sent_s / end_s existed still load: loadgen/report/request_timeline.py derives
them from scheduled_s, queue_ms and e2el_ms."""

from __future__ import annotations

import json
import math

from loadgen.metric_definitions import definitions
from loadgen.metrics import request_times
from loadgen.records import RequestRecord
from loadgen.result import BenchResult, PointResult


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _offset(t: float | None, origin: float) -> float | None:
    return None if t is None else round(t - origin, 6)


def request_rows(records: list[RequestRecord]) -> list[dict]:
    measured = [r for r in records if not r.warmup]
    if not measured:
        return []
    origin = min(r.scheduled for r in measured)
    rows = []
    for r in measured:
        row = {"index": r.index, "scheduled_s": round(r.scheduled - origin, 6), "prompt_len": r.prompt_len,
               "output_len_requested": r.output_len_requested, "ok": r.ok, "error": r.error,
               "error_detail": r.error_detail or None, "interrupted": r.interrupted,
               "finish_reason": r.finish_reason, "output_tokens": r.output_tokens,
               "server_prompt_tokens": r.server_prompt_tokens, "server_output_tokens": r.server_output_tokens,
               "client_output_tokens": r.client_output_tokens}
        row.update(started_s=_offset(r.started, origin), sent_s=_offset(r.sent, origin),
                   end_s=_offset(r.end if r.started is not None else None, origin))
        if r.chunk_tokens:
            row["chunk_tokens"] = list(r.chunk_tokens)
        if r.sent is not None:
            t = request_times(r)
            row.update(queue_ms=_ms(t.queue), ttft_ms=_ms(t.ttft), ttst_ms=_ms(t.ttst), tpot_ms=_ms(t.tpot),
                       e2el_ms=_ms(t.e2el), itls_ms=[round(float(x), 4) for x in t.itl])
        rows.append(row)
    return rows


def spec_fields(point: PointResult) -> dict:
    s = point.spec
    return {"label": s.label, "max_concurrency": s.max_concurrency,
            "request_rate": "inf" if math.isinf(s.request_rate) else s.request_rate,
            "burstiness": s.burstiness, "num_prompts": s.num_prompts, "duration_limit_s": s.duration_s,
            "warmup_requests": s.warmup_requests, "request_timeout_s": s.request_timeout_s}


def to_json(result: BenchResult, include_requests: bool = True) -> dict:
    points = []
    for p in result.points:
        entry = {**spec_fields(p), "started_at": p.started_at, "num_workers": p.num_workers,
                 "interrupted": p.interrupted, **p.summary}
        if p.slo_met is not None:
            entry["slo_met"] = p.slo_met
        if include_requests:
            entry["requests"] = request_rows(p.records)
        points.append(entry)
    doc = {"tool": "tandem bench", **result.settings,
           "percentiles": list(result.percentiles), "sweep_dimension": result.sweep_dimension,
           "interrupted": result.interrupted, "metric_definitions": definitions()}
    if len(points) == 1:
        doc.update({k: v for k, v in points[0].items() if k != "requests"})
    doc["runs"] = points
    if result.capacity is not None:
        doc["capacity"] = result.capacity
    return doc


def write_json(result: BenchResult, path: str) -> dict:
    """Writes the document and returns it."""
    doc = to_json(result)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str)
    return doc
