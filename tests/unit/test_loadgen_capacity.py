"""Capacity search (bracketing + bisection) and the sweep / SLO flag parsers."""

import pytest

from loadgen.capacity import CapacitySearch, parse_slo
from loadgen.errors import BenchConfigError
from loadgen.load_pattern import LoadSpec
from loadgen.sweep import parse_sweep


def search(dimension, capacity, start=1, maximum=1024, max_runs=30):
    s = CapacitySearch(dimension, start, maximum, max_runs)
    while (v := s.next_value()) is not None:
        s.record(v, v <= capacity)
    return s.summary()


@pytest.mark.parametrize("capacity", [1, 2, 3, 37, 64, 100, 511, 1023])
def test_concurrency_search_finds_the_exact_capacity(capacity):
    out = search("concurrency", capacity)
    assert out["capacity"] == capacity and out["converged"]
    assert out["runs"] <= 2 * 11                          # log2(1024) doublings + as many halvings


def test_none_meets_and_all_meet():
    assert search("concurrency", 0)["capacity"] == 0
    out = search("concurrency", 10_000, maximum=256)
    assert out["capacity"] == 256 and out["reached_maximum"]


def test_rate_search_within_tolerance():
    out = search("rate", 13.7, start=1.0, maximum=1000.0)
    assert out["capacity"] <= 13.7 and out["first_failing"] > 13.7
    assert out["first_failing"] / out["capacity"] <= 1.05


def test_run_budget_is_respected():
    out = search("concurrency", 700, max_runs=5)
    assert out["runs"] == 5 and not out["converged"] and out["capacity"] == 16


def test_parse_slo():
    slo = parse_slo("ttft_ms:500,tpot_ms:50,p:95")
    assert slo.limits == (("ttft", 500.0), ("tpot", 50.0)) and slo.percentile == 95.0
    assert parse_slo("e2e:2000").limits == (("e2el", 2000.0),)
    for bad in ("ttft_ms", "ttft_ms:abc", "foo:1", "p:99", "ttft:-1", "ttft:5,p:0"):
        with pytest.raises(BenchConfigError, match="--slo"):
            parse_slo(bad)


def test_parse_sweep():
    sweep = parse_sweep("concurrency:1,2,4")
    specs = sweep.load_specs(LoadSpec(request_rate=5.0, num_prompts=10))
    assert [s.max_concurrency for s in specs] == [1, 2, 4] and all(s.closed_loop for s in specs)
    rates = parse_sweep("rate:0.5,2").load_specs(LoadSpec(max_concurrency=8, num_prompts=10))
    assert [s.request_rate for s in rates] == [0.5, 2.0] and rates[0].max_concurrency == 8
    for bad in ("concurrency", "qps:1,2", "concurrency:1.5", "rate:0", "concurrency:a"):
        with pytest.raises(BenchConfigError, match="--sweep"):
            parse_sweep(bad)
