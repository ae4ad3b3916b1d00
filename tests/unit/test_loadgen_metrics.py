"""Metric arithmetic on records with known times: every definition of docs/metrics.md."""

import math

import numpy as np
import pytest

from loadgen.metrics import GoodputSpec, count_client_tokens, request_times, slo_value, summarize_run
from loadgen.records import RequestRecord
from loadgen.stats import max_overlap, summarize
from loadgen.tokens import ApproximateCounter


def record(i, scheduled, sent, chunks, end, tokens=None, error=None, warmup=False, prompt_len=10,
           server_out=None, server_prompt=None):
    r = RequestRecord(index=i, prompt_len=prompt_len, output_len_requested=len(chunks), warmup=warmup,
                      scheduled=scheduled, started=sent, sent=sent, end=end, chunk_times=list(chunks),
                      text_parts=[" tok"] * len(chunks), server_output_tokens=server_out,
                      server_prompt_tokens=server_prompt)
    if tokens is not None:
        r.chunk_tokens = list(tokens)
    if error:
        r.fail(error)
    return r


def test_request_times_follow_the_definitions():
    r = record(0, scheduled=1.0, sent=1.002, chunks=[1.102, 1.122, 1.152, 1.172], end=1.175)
    t = request_times(r)
    assert t.queue == pytest.approx(2.0)
    assert t.ttft == pytest.approx(100.0)
    assert t.ttst == pytest.approx(120.0)
    assert t.e2el == pytest.approx(173.0)
    assert t.tpot == pytest.approx((173.0 - 100.0) / 3)
    assert np.allclose(t.itl, [20.0, 30.0, 20.0])


def test_ttst_when_the_first_chunk_carries_two_tokens():
    r = record(0, 0.0, 0.0, chunks=[0.1, 0.2], end=0.2, tokens=[2, 1])
    assert request_times(r).ttst == pytest.approx(request_times(r).ttft)
    assert r.output_tokens == 3


def test_single_token_request_has_no_tpot():
    t = request_times(record(0, 0.0, 0.0, chunks=[0.05], end=0.05))
    assert t.tpot is None and t.ttst is None


def test_summary_excludes_warmup_and_counts_failures():
    records = [record(0, 0.0, 0.0, [0.5, 0.6], 0.6, warmup=True),          # ignored
               record(1, 1.0, 1.0, [1.1, 1.2], 1.2),
               record(2, 1.0, 1.0, [1.3, 1.4], 1.4),
               record(3, 1.0, 1.0, [], 1.05, error="500"),
               record(4, 1.0, 1.0, [1.1], 2.0, error="timeout"),
               record(5, 1.0, 1.0, [], 1.1, error="500")]
    count_client_tokens(records, ApproximateCounter())
    s = summarize_run(records, (50.0, 99.0), GoodputSpec(ttft_ms=150))
    assert (s["completed"], s["failed"]) == (2, 3)
    assert s["errors_by_code"] == {"500": 2, "timeout": 1}
    assert s["duration"] == pytest.approx(1.0)                  # 1.0 -> 2.0
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["total_output_tokens"] == 4 and s["output_throughput"] == pytest.approx(4.0)
    assert s["median_ttft_ms"] == pytest.approx(200.0)          # 100 and 300
    # one of 2 completed meets ttft <= 150 ms; the 3 failures count in the denominator
    assert s["goodput_fraction"] == pytest.approx(1 / 5)
    assert s["request_goodput"] == pytest.approx(1.0)
    assert s["max_concurrency_observed"] == 5


def test_server_and_client_token_counts_are_compared():
    records = [record(0, 0, 0, [0.1, 0.2, 0.3], 0.3, server_out=3, server_prompt=10),
               record(1, 0, 0, [0.1, 0.2], 0.3, server_out=4, server_prompt=11)]
    count_client_tokens(records, ApproximateCounter())
    s = summarize_run(records, (50.0,))
    assert s["total_output_tokens"] == 7          # the server's count wins when reported
    assert s["client_output_tokens"] == 5
    assert s["output_token_mismatches"] == 1
    assert s["prompt_token_mismatches"] == 1
    assert s["server_input_tokens"] == 21
    assert s["prompt_tokens_server_minus_client"] == 0.5 and s["output_tokens_server_minus_client"] == 1.0


def test_slo_value_counts_failures_as_infinitely_slow():
    ok = [record(i, 0, 0, [0.010], 0.010) for i in range(98)]
    bad = [record(100 + i, 0, 0, [], 0.001, error="500") for i in range(2)]
    assert slo_value(ok + bad, "ttft", 50) == pytest.approx(10.0)
    assert math.isinf(slo_value(ok + bad, "ttft", 99))
    assert slo_value(ok, "ttft", 99) == pytest.approx(10.0)


def test_summarize_names_and_empty():
    s = summarize("ttft", [1.0, 2.0, 3.0, 4.0], (50.0, 99.9))
    assert s["mean_ttft_ms"] == 2.5 and s["median_ttft_ms"] == 2.5 and "p99.9_ttft_ms" in s and "p50_ttft_ms" in s
    assert all(v is None for v in summarize("itl", [], (99.0,)).values())


def test_max_overlap():
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1          # touching intervals do not overlap
    assert max_overlap([(0, 10), (1, 2), (1.5, 3), (2.5, 4)]) == 3


def test_goodput_validation():
    with pytest.raises(Exception, match="--goodput"):
        GoodputSpec(ttft_ms=0)
