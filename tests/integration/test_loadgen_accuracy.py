"""Measurement accuracy against the load-test target (its own process) with injected delays, and
the client never caps concurrency below what was asked.

The load generator's claim, medians within 1 ms of the injected values at 1,000 streams, holds on
two idle cores and is a benchmark figure (benchmarks/loadgen_capacity.py, RESULTS.md). Here, on
a CI machine that other work shares, the bound is that claim plus the machine's wake-up latency
as the target measured it in the same run (tests/loadgen_target/accuracy.py), at a stream count
two busy cores hold. A client truly off (a few ms early or late, a token's time lost) still
fails: each test checks that the same bound rejects the run's own records shifted just past it."""

import copy

import numpy as np
import pytest

from loadgen.backends import BackendConfig
from loadgen.datasets import DatasetSpec, load_requests
from loadgen.load_pattern import LoadSpec
from loadgen.metrics import count_client_tokens, request_times, summarize_run
from loadgen.tokens import ApproximateCounter
from loadgen.workers import execute
from tests.loadgen_target.accuracy import AccuracyBounds
from tests.loadgen_target.process import TargetProcess

TTFT_MS = 200.0
# TTFT and E2E over gRPC carry the call set-up of Python gRPC on both ends (grpc.aio does not say
# when a request is written, so it cannot be moved into queue time as for HTTP): 0.85-1.2 ms on
# the 2-core VM, on top of the target's own lateness.
GRPC_SETUP_MS = 1.0
# 200 streams at 250 ms per token: 800 tokens/s and ~100 new requests/s, which two cores carry
# with one of them busy elsewhere (1,000 streams is the benchmark's figure, on idle cores).
HTTP_STREAMS = 200
WIDE_ITL_MS = 250.0
ITL_MS = 100.0


@pytest.fixture(scope="module")
def target():
    with TargetProcess(ttft_ms=TTFT_MS, itl_ms=ITL_MS) as t:
        yield t


def run(target, kind: str, concurrency: int, rounds: int, itl_ms: float = ITL_MS):
    counter = ApproximateCounter()
    # Output lengths 6..10 tokens, and slots that start spread over one request's length: streams
    # out of phase, as independent users are, instead of a herd that starts every round at once.
    requests = load_requests(DatasetSpec(random_input_len=16, random_output_len=8, random_range_ratio=0.25),
                             (rounds + 1) * concurrency, counter)
    url = target.grpc_address if kind == "tandem" else target.http_url
    spec = LoadSpec(max_concurrency=concurrency, num_prompts=rounds * concurrency, warmup_requests=concurrency,
                    ramp_up_s=(TTFT_MS + 7 * itl_ms) / 1e3, request_timeout_s=30.0)
    outcome = execute(BackendConfig(kind, url), requests, spec, show_progress=False)
    count_client_tokens(outcome.records, counter)
    return outcome.records, target.emission_stats()


def check_accuracy(records, emission, concurrency, rounds, itl_ms=ITL_MS, setup_ms=0.0):
    s = summarize_run(records, (50.0, 99.0))
    assert s["completed"] == rounds * concurrency and s["failed"] == 0
    assert s["max_concurrency_observed"] == concurrency          # never silently capped
    b = AccuracyBounds.from_emission(emission, setup_ms)
    start_bound, itl_bound = b.start_ms, b.itl_ms
    context = f"bounds {start_bound:.2f} / {itl_bound:.2f} ms; target's own lateness: {emission}"
    assert abs(s["median_ttft_ms"] - TTFT_MS) < start_bound, (s["median_ttft_ms"], context)
    assert abs(s["median_itl_ms"] - itl_ms) < itl_bound, (s["median_itl_ms"], context)
    assert abs(s["mean_itl_ms"] - itl_ms) < itl_bound, (s["mean_itl_ms"], context)
    done = [r for r in records if r.ok and not r.warmup]
    e2e_error = [request_times(r).e2el - (TTFT_MS + (r.output_tokens - 1) * itl_ms) for r in done]
    assert abs(float(np.median(e2e_error))) < start_bound, (np.median(e2e_error), context)
    assert s["output_token_mismatches"] == 0 and s["prompt_token_mismatches"] == 0


def check_rejects_a_client_off(records, emission, concurrency, rounds, itl_ms=ITL_MS, setup_ms=0.0):
    """The same check fails the run's records as a client would have measured them with its send
    stamp early by just past the start bound, or with every other token's arrival missed."""
    start_bound = AccuracyBounds.from_emission(emission, setup_ms).start_ms
    early = copy.deepcopy(records)
    for r in early:
        r.sent -= (start_bound + 0.5) / 1e3
    with pytest.raises(AssertionError):
        check_accuracy(early, emission, concurrency, rounds, itl_ms, setup_ms)
    dropped = copy.deepcopy(records)
    for r in dropped:
        r.chunk_times = r.chunk_times[::2]
    with pytest.raises(AssertionError):
        check_accuracy(dropped, emission, concurrency, rounds, itl_ms, setup_ms)


@pytest.mark.slow
def test_openai_http_accuracy_at_many_streams():
    with TargetProcess(ttft_ms=TTFT_MS, itl_ms=WIDE_ITL_MS, no_grpc=True) as wide:
        records, emission = run(wide, "openai", concurrency=HTTP_STREAMS, rounds=1, itl_ms=WIDE_ITL_MS)
    check_accuracy(records, emission, HTTP_STREAMS, 1, WIDE_ITL_MS)
    check_rejects_a_client_off(records, emission, HTTP_STREAMS, 1, WIDE_ITL_MS)


def test_tandem_grpc_accuracy(target):
    records, emission = run(target, "tandem", concurrency=50, rounds=2)
    check_accuracy(records, emission, 50, 2, setup_ms=GRPC_SETUP_MS)
    check_rejects_a_client_off(records, emission, 50, 2, setup_ms=GRPC_SETUP_MS)


def test_openai_chat_accuracy(target):
    records, emission = run(target, "openai-chat", concurrency=50, rounds=2)
    check_accuracy(records, emission, 50, 2)
    check_rejects_a_client_off(records, emission, 50, 2)
