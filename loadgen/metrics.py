"""From request records to the run's metrics (names and meanings: metric_definitions.py)."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from loadgen.errors import BenchConfigError
from loadgen.records import RequestRecord
from loadgen.stats import max_overlap, summarize
from loadgen.token_mismatch import output_mismatch_cause
from loadgen.tokens import TokenCounter

GOODPUT_KEYS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class GoodputSpec:
    """Per-request limits in ms (vLLM's --goodput ttft:MS tpot:MS e2el:MS); None = no limit."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def __post_init__(self) -> None:
        for key in GOODPUT_KEYS:
            value = getattr(self, f"{key}_ms")
            if value is not None and not value > 0:
                raise BenchConfigError("--goodput", f"{key} must be > 0 ms, got {value}")

    @property
    def active(self) -> bool:
        return any(getattr(self, f"{k}_ms") is not None for k in GOODPUT_KEYS)

    def met_by(self, ttft_ms: float, tpot_ms: float | None, e2el_ms: float) -> bool:
        return ((self.ttft_ms is None or ttft_ms <= self.ttft_ms)
                and (self.tpot_ms is None or tpot_ms is None or tpot_ms <= self.tpot_ms)
                and (self.e2el_ms is None or e2el_ms <= self.e2el_ms))


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """One completed request's latencies in ms (ttft None when it produced no output)."""

    ttft: float | None
    ttst: float | None
    tpot: float | None
    e2el: float
    queue: float
    itl: np.ndarray


def request_times(r: RequestRecord) -> RequestTimes:
    e2el = (r.end - r.sent) * 1e3
    queue = max(0.0, (r.sent - r.scheduled) * 1e3)
    if not r.chunk_times:
        return RequestTimes(None, None, None, e2el, queue, np.empty(0))
    times = np.asarray(r.chunk_times)
    ttft = (times[0] - r.sent) * 1e3
    if r.chunk_tokens and r.chunk_tokens[0] >= 2:
        ttst = ttft
    else:
        ttst = (times[1] - r.sent) * 1e3 if len(times) > 1 else None
    n = r.output_tokens
    tpot = (e2el - ttft) / (n - 1) if n > 1 else None
    return RequestTimes(ttft, ttst, tpot, e2el, queue, np.diff(times) * 1e3)


def count_client_tokens(records: list[RequestRecord], counter: TokenCounter) -> None:
    """Sets client_output_tokens: the tokenizer's count of the streamed text when exact, else the
    token count the protocol gives per chunk (gRPC), else one token per chunk (HTTP)."""
    for r in records:
        if counter.exact:
            r.client_output_tokens = counter.count("".join(r.text_parts))
        else:
            r.client_output_tokens = sum(r.chunk_tokens) if r.chunk_tokens else len(r.chunk_times)


def summarize_run(records: list[RequestRecord], percentiles: tuple[float, ...],
                  goodput: GoodputSpec | None = None) -> dict:
    """The run's metrics over measured (non-warm-up) records."""
    measured = [r for r in records if not r.warmup]
    done = [r for r in measured if r.ok]
    failed = [r for r in measured if r.error is not None and not r.interrupted]
    times = [request_times(r) for r in done]
    sent = [r for r in measured if r.sent is not None]
    duration = (max(r.end for r in sent) - min(r.scheduled for r in sent)) if sent else 0.0
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)

    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    good = sum(1 for t in times if t.ttft is not None and goodput is not None and goodput.active
               and goodput.met_by(t.ttft, t.tpot, t.e2el))
    summary: dict = {
        "completed": len(done),
        "failed": len(failed),
        "interrupted_requests": sum(1 for r in measured if r.interrupted),
        "errors_by_code": dict(collections.Counter(r.error for r in failed).most_common()),
        "duration": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": per_s(len(done)),
        "output_throughput": per_s(output_tokens),
        "total_token_throughput": per_s(input_tokens + output_tokens),
        "request_goodput": per_s(good) if goodput is not None and goodput.active else None,
        "goodput_fraction": (good / (len(done) + len(failed)) if goodput is not None and goodput.active
                             and (done or failed) else None),
        "max_concurrency_observed": max_overlap([(r.started, r.end) for r in records if r.started is not None]),
    }
    summary.update(_token_agreement(done))
    for name in ("ttft", "ttst", "tpot", "e2el", "queue"):
        summary.update(summarize(name, [getattr(t, name) for t in times if getattr(t, name) is not None],
                                 percentiles))
    itl = np.concatenate([t.itl for t in times]) if times else np.empty(0)
    summary.update(summarize("itl", itl, percentiles))
    return summary


def _token_agreement(done: list[RequestRecord]) -> dict:
    server_in = [r for r in done if r.server_prompt_tokens is not None]
    server_out = [r for r in done if r.server_output_tokens is not None]
    mismatched = [r for r in server_out
                  if r.client_output_tokens is not None and r.server_output_tokens != r.client_output_tokens]
    return {
        "server_input_tokens": sum(r.server_prompt_tokens for r in server_in) if server_in else None,
        "client_output_tokens": sum(r.client_output_tokens or 0 for r in done),
        "prompt_token_mismatches": sum(1 for r in server_in if r.server_prompt_tokens != r.prompt_len),
        "output_token_mismatches": len(mismatched),
        "output_token_mismatch_cause": output_mismatch_cause(mismatched),
        "requests_with_server_usage": len(server_out),
        "prompt_tokens_server_minus_client": (
            sum(r.server_prompt_tokens - r.prompt_len for r in server_in) / len(server_in) if server_in else None),
        "output_tokens_server_minus_client": (
            sum(r.server_output_tokens - (r.client_output_tokens or 0) for r in server_out) / len(server_out)
            if server_out else None),
    }


def slo_value(records: list[RequestRecord], metric: str, percentile: float) -> float:
    """The percentile of a latency metric over measured requests, each FAILED request counting as
    an infinite latency, so a server that fails requests cannot look fast."""
    values = []
    for r in records:
        if r.warmup or r.interrupted:
            continue
        if not r.ok:
            values.append(np.inf)
            continue
        v = getattr(request_times(r), metric)
        if v is not None:
            values.append(v)
    if not values:
        return float("inf")
    return float(np.percentile(np.asarray(values), percentile, method="higher"))
