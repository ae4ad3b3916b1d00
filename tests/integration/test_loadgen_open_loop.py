"""Open-loop arrivals, as sent on the wire, match the requested rate and distribution; in-flight
concurrency is never capped below what was asked, across worker processes too."""

import numpy as np
import pytest

from loadgen.backends import BackendConfig
from loadgen.datasets import DatasetSpec, load_requests
from loadgen.load_pattern import LoadSpec
from loadgen.metrics import summarize_run
from loadgen.tokens import ApproximateCounter
from loadgen.workers import execute
from tests.loadgen_target.accuracy import AccuracyBounds
from tests.loadgen_target.ks import erlang2_cdf, exponential_cdf, ks_test
from tests.loadgen_target.process import TargetProcess

RATE = 100.0
N = 400


@pytest.fixture(scope="module")
def target():
    with TargetProcess(ttft_ms=5, itl_ms=2) as t:
        yield t


def requests(n):
    return load_requests(DatasetSpec(random_input_len=8, random_output_len=4), n, ApproximateCounter())


def sent_gaps(target, burstiness, seed=11):
    spec = LoadSpec(request_rate=RATE, burstiness=burstiness, num_prompts=N, seed=seed, request_timeout_s=10)
    outcome = execute(BackendConfig("openai", target.http_url), requests(N), spec, show_progress=False)
    sent = np.sort([r.sent for r in outcome.records])
    assert len(sent) == N and all(r.ok for r in outcome.records)
    return np.diff(sent), outcome.records


@pytest.mark.parametrize("burstiness, cdf", [(1.0, exponential_cdf(RATE)), (2.0, erlang2_cdf(RATE))])
def test_open_loop_arrivals_match_rate_and_distribution(target, burstiness, cdf):
    gaps, records = sent_gaps(target, burstiness)
    assert np.mean(gaps) == pytest.approx(1 / RATE, rel=0.15)
    _, p = ks_test(gaps, cdf)
    assert p > 0.001, f"send gaps do not follow gamma(shape={burstiness}): p={p:.2g}"
    s = summarize_run(records, (50.0, 99.0))
    assert s["median_queue_ms"] < 2.0           # the client kept up with the schedule


def test_max_concurrency_caps_an_open_loop_exactly(target):
    spec = LoadSpec(request_rate=2000.0, max_concurrency=16, num_prompts=300, request_timeout_s=10)
    outcome = execute(BackendConfig("openai", target.http_url), requests(300), spec, show_progress=False)
    s = summarize_run(outcome.records, (50.0,))
    assert s["max_concurrency_observed"] == 16 and s["completed"] == 300
    assert s["p50_queue_ms"] > 1.0              # waiting for a slot shows as queueing, not TTFT


@pytest.mark.parametrize("kind", ["openai", "tandem"])
def test_worker_processes_merge_and_keep_concurrency(kind):
    with TargetProcess(ttft_ms=100, itl_ms=50) as target:
        url = target.grpc_address if kind == "tandem" else target.http_url
        spec = LoadSpec(max_concurrency=64, num_prompts=256, warmup_requests=64, ramp_up_s=0.5, request_timeout_s=10)
        outcome = execute(BackendConfig(kind, url), requests(320), spec, num_workers=2, show_progress=False)
        emission = target.emission_stats()
    s = summarize_run(outcome.records, (50.0,))
    assert outcome.num_workers == 2 and s["completed"] == 256
    assert s["max_concurrency_observed"] == 64                 # the two shares overlap on one clock
    # Accuracy proper is test_loadgen_accuracy; here both shares' times must be on one clock, so
    # the same bound holds (with room for gRPC call set-up and a third process on two cores).
    bounds = AccuracyBounds.from_emission(emission, setup_ms=2.0)
    assert s["median_ttft_ms"] == pytest.approx(100.0, abs=bounds.start_ms), emission
    assert s["median_itl_ms"] == pytest.approx(50.0, abs=bounds.itl_ms), emission
