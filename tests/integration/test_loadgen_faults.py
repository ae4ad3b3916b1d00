"""A server that errors, stalls or drops streams costs failed requests, counted by code, never
the run; failures count against goodput."""

import pytest

from loadgen.backends import BackendConfig
from loadgen.datasets import DatasetSpec, load_requests
from loadgen.errors import TargetUnreachableError
from loadgen.load_pattern import LoadSpec
from loadgen.metrics import GoodputSpec, count_client_tokens, summarize_run
from loadgen.tokens import ApproximateCounter
from loadgen.workers import execute
from tests.loadgen_target.process import TargetProcess

N = 40


def run(target, kind, timeout_s=5.0, goodput=None, api_key=None):
    counter = ApproximateCounter()
    requests = load_requests(DatasetSpec(random_input_len=8, random_output_len=4), N, counter)
    url = target.grpc_address if kind == "tandem" else target.http_url
    spec = LoadSpec(max_concurrency=8, num_prompts=N, request_timeout_s=timeout_s)
    outcome = execute(BackendConfig(kind, url, api_key=api_key), requests, spec, show_progress=False)
    count_client_tokens(outcome.records, counter)
    return summarize_run(outcome.records, (50.0,), goodput)


@pytest.fixture(scope="module")
def errors_target():
    with TargetProcess(ttft_ms=5, itl_ms=2, error_every=5, error_status=503) as t:
        yield t


@pytest.mark.parametrize("kind, code", [("openai", "503"), ("openai-chat", "503"), ("tandem", "UNAVAILABLE")])
def test_error_statuses_are_counted_by_code(errors_target, kind, code):
    s = run(errors_target, kind, goodput=GoodputSpec(ttft_ms=1000))
    assert s["failed"] == N // 5 and s["errors_by_code"] == {code: N // 5}
    assert s["completed"] == N - N // 5
    assert s["goodput_fraction"] == pytest.approx((N - N // 5) / N)     # failures in the denominator


@pytest.mark.parametrize("kind", ["openai", "tandem"])
def test_stalled_streams_time_out(kind):
    with TargetProcess(ttft_ms=5, itl_ms=2, stall_every=10, stall_after=2) as t:
        s = run(t, kind, timeout_s=0.5)
    assert s["errors_by_code"] == {"timeout": N // 10} and s["completed"] == N - N // 10


@pytest.mark.parametrize("kind", ["openai", "openai-chat", "tandem"])
def test_early_closed_streams_are_failures(kind):
    with TargetProcess(ttft_ms=5, itl_ms=2, close_every=4, close_after=1) as t:
        s = run(t, kind)
    assert s["errors_by_code"] == {"stream_closed": N // 4} and s["completed"] == N - N // 4


@pytest.mark.parametrize("kind", ["openai", "tandem"])
def test_api_key_is_sent(kind):
    with TargetProcess(ttft_ms=1, itl_ms=1, api_key="sesame") as t:
        assert run(t, kind, api_key="sesame")["completed"] == N
        with pytest.raises(TargetUnreachableError, match="API key|UNAUTHENTICATED"):
            run(t, kind, api_key="wrong")
