"""Result files: vLLM-compatible JSON fields, CSV rows, a PNG per sweep, a self-contained HTML
report, and a definition in docs/metrics.md for every metric reported."""

import csv
import json
import os
import re

from loadgen.load_pattern import LoadSpec
from loadgen.metric_definitions import definitions
from loadgen.metrics import GoodputSpec, count_client_tokens, summarize_run
from loadgen.records import RequestRecord
from loadgen.report.console import format_run, format_sweep
from loadgen.report.files import write_all
from loadgen.result import BenchResult, PointResult
from loadgen.tokens import ApproximateCounter

PERCENTILES = (50.0, 99.0)
DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "metrics.md")


def point(concurrency: int, slow: float) -> PointResult:
    records = []
    for i in range(20):
        t0 = i * 0.01
        r = RequestRecord(index=i, prompt_len=12, output_len_requested=4, scheduled=t0, sent=t0,
                          chunk_times=[t0 + slow + k * 0.005 for k in range(4)], text_parts=[" a"] * 4,
                          end=t0 + slow + 0.016, server_output_tokens=4, server_prompt_tokens=12)
        if i == 3:
            r.fail("503", "busy")
        records.append(r)
    count_client_tokens(records, ApproximateCounter())
    summary = summarize_run(records, PERCENTILES, GoodputSpec(ttft_ms=150))
    return PointResult(LoadSpec(max_concurrency=concurrency, num_prompts=20), summary, records, False,
                       "2026-11-27T00:00:00Z", 1)


def result() -> BenchResult:
    return BenchResult(settings={"backend": "openai", "model_id": "m", "token_count_method": "approximate"},
                       percentiles=PERCENTILES, sweep_dimension="concurrency",
                       points=[point(1, 0.1), point(4, 0.2)])


def test_files(tmp_path):
    paths = write_all(result(), str(tmp_path), "r")
    assert [os.path.basename(p) for p in paths] == [
        "r.json", "r.csv", "r.png", "r.cdf.png", "r.timeline-1-concurrency-1.png", "r.timeline-2-concurrency-4.png",
        "r.html"]
    doc = json.loads((tmp_path / "r.json").read_text())
    run = doc["runs"][0]
    for key in ("mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "output_throughput", "request_throughput",
                "completed", "total_input_tokens", "mean_e2el_ms", "mean_queue_ms", "errors_by_code"):
        assert key in run
    assert run["completed"] == 19 and run["failed"] == 1 and run["errors_by_code"] == {"503": 1}
    assert len(run["requests"]) == 20 and run["requests"][0]["ttft_ms"] == 100.0
    assert set(definitions()) <= set(doc["metric_definitions"])
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["max_concurrency"] for r in rows] == ["1", "4"] and rows[0]["errors_by_code"] == "503:1"
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "r.html").read_text()
    assert html.count("<svg class='panel'") >= 8 and "concurrency=4" in html and "r.cdf.png" in html
    assert not re.search(r"(src|href)=['\"]?https?:", html)          # no network assets


def test_single_run_has_vllm_fields_at_top_level(tmp_path):
    single = BenchResult(settings={"backend": "openai"}, percentiles=PERCENTILES, points=[point(2, 0.1)])
    paths = write_all(single, str(tmp_path), "one")
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["completed"] == 19 and "median_ttft_ms" in doc and "requests" not in doc
    names = [os.path.basename(p) for p in paths]
    assert "one.png" not in names and "one.cdf.png" in names      # no curves for one point; its distributions


def test_console_tables():
    r = result()
    text = format_run("concurrency=1", r.points[0].summary, PERCENTILES, "approximate")
    assert "Failed requests:" in text and "503 x1" in text and "Time Queued in Client" in text
    sweep = format_sweep([(p.label, p.summary) for p in r.points], PERCENTILES)
    assert len(sweep.splitlines()) == 3 and "concurrency=4" in sweep


def test_every_metric_is_defined_in_the_docs():
    text = open(DOCS, encoding="utf-8").read()
    missing = [name for name in definitions() if f"**{name}**" not in text]
    assert not missing, f"docs/metrics.md lacks {missing}"


def test_client_self_check():
    from loadgen.self_check import client_warnings
    base = {"completed": 100, "failed": 0, "max_concurrency_observed": 8, "p99_queue_ms": 0.2}
    assert client_warnings(LoadSpec(max_concurrency=8), base) == []
    assert "only 6" in client_warnings(LoadSpec(max_concurrency=8), base | {"max_concurrency_observed": 6})[0]
    late = base | {"p99_queue_ms": 40.0}
    assert "fell behind" in client_warnings(LoadSpec(request_rate=5.0), late)[0]
    assert client_warnings(LoadSpec(request_rate=5.0, max_concurrency=8), late) == []   # waiting for a slot
