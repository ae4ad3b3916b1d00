"""Arrival processes and load splitting."""

import itertools
import math

import numpy as np
import pytest

from loadgen.errors import BenchConfigError
from loadgen.load_pattern import LoadSpec, arrival_gaps, split_load
from tests.loadgen_target.ks import erlang2_cdf, exponential_cdf, ks_test


def gaps(rate, burstiness, n, seed=7):
    return list(itertools.islice(arrival_gaps(rate, burstiness, np.random.default_rng(seed)), n))


def test_poisson_gaps_are_exponential():
    g = gaps(50.0, 1.0, 4000)
    assert np.mean(g) == pytest.approx(1 / 50, rel=0.05)
    _, p = ks_test(g, exponential_cdf(50.0))
    assert p > 0.01


def test_gamma_gaps_follow_the_burstiness():
    g = gaps(50.0, 2.0, 4000)
    _, p = ks_test(g, erlang2_cdf(50.0))
    assert p > 0.01
    _, p_exp = ks_test(g, exponential_cdf(50.0))
    assert p_exp < 1e-6                                     # the test can tell the two apart
    bursty = gaps(50.0, 0.25, 4000)
    assert np.std(bursty) / np.mean(bursty) == pytest.approx(2.0, rel=0.15)   # CV = 1/sqrt(shape)


def test_same_seed_same_gaps():
    assert gaps(10, 1, 50, seed=3) == gaps(10, 1, 50, seed=3) != gaps(10, 1, 50, seed=4)


def test_split_load_preserves_totals():
    spec = LoadSpec(max_concurrency=2001, num_prompts=10_001, warmup_requests=7, request_rate=30.0)
    shares = split_load(spec, 4)
    assert sum(s.max_concurrency for s in shares) == 2001
    assert sum(s.num_prompts for s in shares) == 10_001
    assert sum(s.warmup_requests for s in shares) == 7
    assert sum(s.request_rate for s in shares) == pytest.approx(30.0)
    assert len({s.seed for s in shares}) == 4


def test_split_never_exceeds_concurrency():
    assert len(split_load(LoadSpec(max_concurrency=2, num_prompts=100), 8)) == 2


@pytest.mark.parametrize("changes, flag", [
    (dict(max_concurrency=0), "--max-concurrency"), (dict(request_rate=0.0), "--request-rate"),
    (dict(burstiness=-1.0), "--burstiness"), (dict(num_prompts=None), "--num-prompts"),
    (dict(duration_s=0.0), "--duration"), (dict(warmup_requests=-1), "--warmup-requests"),
    (dict(request_timeout_s=0.0), "--request-timeout"), (dict(ramp_up_s=1.0), "--ramp-up"),
    (dict(num_prompts=None, duration_s=5.0), "--duration")])
def test_load_spec_validation_names_the_flag(changes, flag):
    with pytest.raises(BenchConfigError, match=flag):
        LoadSpec(**changes)


def test_labels():
    assert LoadSpec(max_concurrency=8).label == "concurrency=8"
    assert LoadSpec(request_rate=2.5, max_concurrency=4).label == "rate=2.5/s, max_concurrency=4"
    assert LoadSpec().closed_loop and math.isinf(LoadSpec().request_rate)
