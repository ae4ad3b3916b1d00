"""Reports from saved results: the request timeline (and files that predate its fields), the
figures (throughput and requests/s never share an axis), and `tandem bench compare` (ratios of a
result to itself are 1.0, unlike workloads are flagged, labels, bad input)."""

import json

import numpy as np
import pytest

from loadgen.errors import BenchConfigError, ResultFileError
from loadgen.load_pattern import LoadSpec
from loadgen.metrics import GoodputSpec, count_client_tokens, summarize_run
from loadgen.records import RequestRecord
from loadgen.report.compare import make_runs, ratio_rows, workload_differences
from loadgen.report.compare_report import write_compare
from loadgen.report.figure import Panel, Series
from loadgen.report.files import write_all
from loadgen.report.request_timeline import spans, time_series
from loadgen.report.result_file import load_result
from loadgen.report.run_figures import curves_figure, timeline_figure
from loadgen.report.svg_chart import panel_svg
from loadgen.result import BenchResult, PointResult
from loadgen.tokens import ApproximateCounter

PERCENTILES = (50.0, 99.0)


def point(concurrency: int, ttft: float, prompt_len: int = 12, fail_every: int = 0, n: int = 24) -> PointResult:
    """n requests, `concurrency` at a time, 4 chunks of 2 tokens each; every fail_every-th fails
    after its first chunk."""
    records = []
    for i in range(n):
        t0 = (i // concurrency) * (ttft + 0.04)
        r = RequestRecord(index=i, prompt_len=prompt_len, output_len_requested=8, scheduled=t0, started=t0,
                          sent=t0 + 0.001, chunk_times=[t0 + 0.001 + ttft + k * 0.01 for k in range(4)],
                          chunk_tokens=[2, 2, 2, 2], text_parts=[" a b"] * 4, end=t0 + 0.001 + ttft + 0.031,
                          server_output_tokens=8, server_prompt_tokens=prompt_len)
        if fail_every and i % fail_every == fail_every - 1:
            r.chunk_times, r.chunk_tokens, r.text_parts = r.chunk_times[:1], [2], [" a b"]
            r.server_output_tokens = None
            r.fail("500", "injected")
        records.append(r)
    count_client_tokens(records, ApproximateCounter())
    summary = summarize_run(records, PERCENTILES, GoodputSpec(ttft_ms=1000))
    return PointResult(LoadSpec(max_concurrency=concurrency, num_prompts=n), summary, records, False,
                       "2026-12-01T00:00:00Z", 1)


def saved(tmp_path, name: str, prompt_len: int = 12, fail_every: int = 0, url: str = "http://127.0.0.1:1") -> str:
    result = BenchResult(settings={"backend": "openai", "base_url": url, "model_id": "m",
                                   "token_count_method": "approximate", "dataset_name": "random"},
                         percentiles=PERCENTILES, sweep_dimension="concurrency",
                         points=[point(c, 0.02 * c, prompt_len, fail_every) for c in (1, 2, 4)])
    write_all(result, str(tmp_path / name), name, plots=False)
    return str(tmp_path / name / f"{name}.json")


def test_timeline_accounts_for_every_request_token_and_failure(tmp_path):
    result = load_result(saved(tmp_path, "a", fail_every=4))
    p = result.points[2]
    ts = time_series(spans(p.requests))
    failed = p.summary["failed"]
    assert failed == 6
    assert ts.errors_per_s.sum() * ts.bin_s == pytest.approx(failed)
    streamed = sum(r["output_tokens"] for r in p.requests)
    assert ts.output_tokens_per_s.sum() * ts.bin_s == pytest.approx(streamed)
    busy = sum(r["end_s"] - r["started_s"] for r in p.requests)
    assert ts.in_flight.sum() * ts.bin_s == pytest.approx(busy, rel=1e-6)
    assert ts.in_flight.max() <= 4 + 1e-9
    fig = timeline_figure("t", "t", p.requests)
    errors = next(s for panel in fig.panels for s in panel.series if s.name == "errors/s")
    assert sum(y for y in errors.ys[:-1]) * ts.bin_s == pytest.approx(failed)


def test_files_without_timeline_fields_still_load(tmp_path):
    path = saved(tmp_path, "a")
    doc = json.loads(open(path).read())
    for run in doc["runs"]:
        for row in run["requests"]:
            for key in ("started_s", "sent_s", "end_s", "chunk_tokens"):
                row.pop(key)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    new_spans = spans(load_result(path).points[1].requests)
    old_spans = spans(load_result(str(old)).points[1].requests)
    assert len(old_spans) == len(new_spans) == 24
    for a, b in zip(new_spans, old_spans):
        assert b.end == pytest.approx(a.end, abs=1e-6) and b.started == pytest.approx(a.started + 0.001, abs=1e-6)
        np.testing.assert_allclose(b.chunk_times, a.chunk_times, atol=1e-6)
        assert b.chunk_tokens.sum() == pytest.approx(a.chunk_tokens.sum())


def test_throughput_and_request_rate_have_separate_axes(tmp_path):
    figure = curves_figure(load_result(saved(tmp_path, "a", fail_every=4)))
    by_title = {p.title: p for p in figure.panels}
    assert [s.name for s in by_title["Output throughput"].series] == ["output throughput"]
    assert [s.name for s in by_title["Request throughput"].series] == ["request throughput"]
    assert by_title["Output throughput"].y_label != by_title["Request throughput"].y_label
    goodput = by_title["Goodput"].series[0].ys
    completed = by_title["Request throughput"].series[0].ys
    assert all(g <= c for g, c in zip(goodput, completed))
    assert by_title["Goodput fraction"].series[0].ys == (0.75, 0.75, 0.75)     # failures count against goodput
    assert all(y > 0 for y in by_title["Failed requests"].series[0].ys)


def test_svg_panel_draws_every_series_and_its_points():
    panel = Panel("t", "x", "y", (Series("a", (1, 2, 4), (1.0, None, 3.0)), Series("b", (1, 2), (2.0, 2.5), 1, 1)),
                  x_log=True)
    svg = panel_svg(panel, "u")
    assert svg.count("<g class='series'") == 2 and "data-series='a'" in svg
    assert svg.count("<circle cx=") == 2 and svg.count("<rect x=") >= 2          # markers: a circles, b squares
    assert "stroke-dasharray='6 3'" in svg
    assert json.loads(svg.split("data-points='")[1].split("'")[0])[1][2:] == [4.0, 3.0]   # the gap is skipped
    assert "no data" in panel_svg(Panel("e", "x", "y", (Series("a", (1,), (None,)),)), "v")


def test_compare_with_itself_gives_ratios_of_one(tmp_path):
    path = saved(tmp_path, "a", fail_every=5)
    results = [load_result(path), load_result(path)]
    runs = make_runs(results, None)
    assert runs[0].label != runs[1].label
    rows = ratio_rows(runs)
    assert [r["x"] for r in rows] == [1.0, 2.0, 4.0]
    for row in rows:
        values = [v for v in row["ratios"].values() if v is not None]
        assert len(values) == 12 and all(v == 1.0 for v in values)
    assert workload_differences(runs) == {}
    paths, differences = write_compare(results, str(tmp_path / "out"), ["before", "after"], plots=False)
    html = open(tmp_path / "out" / "compare.html").read()
    assert differences == {} and "1.00x" in html and "differ in workload" not in html
    assert json.loads(open(tmp_path / "out" / "compare.json").read())["ratios"][0]["ratios"]["TTFT p50"] == 1.0


def test_compare_flags_different_workloads(tmp_path):
    a = load_result(saved(tmp_path, "a"))
    b = load_result(saved(tmp_path, "b", prompt_len=100, url="http://127.0.0.1:2"))
    runs = make_runs([a, b], None)
    assert [r.label for r in runs] == ["openai @ 127.0.0.1:1", "openai @ 127.0.0.1:2"]
    differences = workload_differences(runs)
    assert differences["mean prompt tokens"] == [12.0, 100.0]
    write_compare([a, b], str(tmp_path / "out"), plots=False)
    html = open(tmp_path / "out" / "compare.html").read()
    assert "Warning: these runs differ in workload" in html and "mean prompt tokens" in html


def test_compare_input_errors(tmp_path):
    path = saved(tmp_path, "a")
    with pytest.raises(BenchConfigError, match="--label: give one label per result file"):
        make_runs([load_result(path)] * 2, ["only one"])
    with pytest.raises(BenchConfigError, match="--label: labels must differ"):
        make_runs([load_result(path)] * 2, ["x", "x"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ResultFileError, match="not a tandem bench result"):
        load_result(str(bad))
    with pytest.raises(ResultFileError, match="cannot read"):
        load_result(str(tmp_path / "missing.json"))


def test_capacity_and_rate_axis(tmp_path):
    points = [point(1, 0.02), point(2, 0.04)]
    rate_points = [PointResult(LoadSpec(request_rate=r, num_prompts=24), p.summary, p.records, False, p.started_at, 1)
                   for r, p in zip((0.5, 2.0), points)]
    by_rate = BenchResult(settings={"backend": "openai"}, percentiles=PERCENTILES, sweep_dimension="rate",
                          points=rate_points)
    searched = BenchResult(settings={"backend": "tandem"}, percentiles=PERCENTILES, sweep_dimension="concurrency",
                           points=points, capacity={"dimension": "concurrency", "slo": {"ttft": 30.0},
                                                    "slo_percentile": 99.0, "capacity": 1, "first_failing": 2,
                                                    "reached_maximum": False, "runs": 2, "converged": True})
    write_all(by_rate, str(tmp_path), "rate", plots=False)
    write_all(searched, str(tmp_path), "cap", plots=False)
    rate, cap = load_result(str(tmp_path / "rate.json")), load_result(str(tmp_path / "cap.json"))
    assert rate.dimension == "rate" and [p.x for p in rate.points] == [0.5, 2.0]
    assert curves_figure(rate).panels[0].x_label == "request rate (req/s)"
    runs = make_runs([cap, rate], None)
    assert workload_differences(runs)["load axis (sweep_dimension)"] == ["concurrency", "rate"]
    assert ratio_rows(runs) == []                     # no shared point across different axes
    write_compare([cap, rate], str(tmp_path / "out"), plots=False)
    html = open(tmp_path / "out" / "compare.html").read()
    assert "SLO capacity" in html and "ttft &lt;= 30 ms" in html and "share no load point" in html
