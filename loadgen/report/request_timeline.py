"""One load point's requests over time, from the request rows of a result file: when each was in
flight, when each chunk arrived and how many tokens it carried. From these: the run's time series
(requests in flight, output tokens/s, errors/s, in bins) and its latency distributions.

Rows written before started_s / sent_s / end_s existed are read as sent = scheduled + queue and
end = sent + e2el, in flight from the send (the client's connection set-up is then not counted)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_BINS = 120
MAX_CDF_POINTS = 300


@dataclass(frozen=True)
class RequestSpan:
    started: float
    end: float
    failed: bool                       # ended in an error (not a Ctrl-C interruption)
    chunk_times: np.ndarray            # seconds, same origin as started / end
    chunk_tokens: np.ndarray           # tokens per chunk (the request's count spread evenly when unknown)


def _chunk_times(row: dict, sent: float) -> np.ndarray:
    if row.get("ttft_ms") is None:
        return np.empty(0)
    gaps = np.asarray([row["ttft_ms"], *(row.get("itls_ms") or ())], dtype=float) / 1e3
    return sent + np.cumsum(gaps)


def _chunk_tokens(row: dict, chunks: int) -> np.ndarray:
    given = row.get("chunk_tokens")
    if given and len(given) == chunks:
        return np.asarray(given, dtype=float)
    if not chunks:
        return np.empty(0)
    total = row.get("output_tokens") or chunks
    return np.full(chunks, total / chunks)


def span(row: dict) -> RequestSpan | None:
    """None for a request that never left the client (no send time)."""
    sent = row.get("sent_s")
    if sent is None:
        if row.get("queue_ms") is None:
            return None
        sent = row["scheduled_s"] + row["queue_ms"] / 1e3
    end = row.get("end_s")
    if end is None:
        end = sent + (row.get("e2el_ms") or 0.0) / 1e3
    started = row.get("started_s")
    started = sent if started is None else started
    times = _chunk_times(row, sent)
    return RequestSpan(started=started, end=max(end, started),
                       failed=bool(row.get("error")) and not row.get("interrupted"),
                       chunk_times=times, chunk_tokens=_chunk_tokens(row, len(times)))


def spans(rows) -> list[RequestSpan]:
    return [s for s in (span(r) for r in rows) if s is not None]


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at least raw."""
    if raw <= 0:
        return 1.0
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10 ** exp >= raw * (1 - 1e-9):
            return m * 10 ** exp
    return 10 ** (exp + 1)


@dataclass(frozen=True)
class TimeSeries:
    bin_s: float
    starts: np.ndarray                 # each bin's start, seconds from the point's first scheduled request
    in_flight: np.ndarray              # mean requests in flight over the bin
    output_tokens_per_s: np.ndarray    # tokens of every chunk that arrived in the bin, per second
    errors_per_s: np.ndarray           # requests that failed in the bin, per second


def time_series(run_spans: list[RequestSpan], max_bins: int = MAX_BINS) -> TimeSeries | None:
    if not run_spans:
        return None
    begin = min(0.0, min(s.started for s in run_spans))
    finish = max(s.end for s in run_spans)
    width = nice_step(max(finish - begin, 1e-3) / max_bins)
    edges = begin + width * np.arange(math.ceil((finish - begin) / width) + 1)
    if len(edges) < 2:
        edges = np.array([begin, begin + width])
    starts = np.array([s.started for s in run_spans])
    ends = np.array([s.end for s in run_spans])
    # Time each request spent in flight before each edge; differences give the mean over a bin.
    before = np.clip(edges[:, None] - starts[None, :], 0.0, (ends - starts)[None, :]).sum(axis=1)
    chunk_t = np.concatenate([s.chunk_times for s in run_spans])
    chunk_n = np.concatenate([s.chunk_tokens for s in run_spans])
    tokens, _ = np.histogram(chunk_t, bins=edges, weights=chunk_n)
    errors, _ = np.histogram([s.end for s in run_spans if s.failed], bins=edges)
    return TimeSeries(bin_s=width, starts=edges[:-1], in_flight=np.diff(before) / width,
                      output_tokens_per_s=tokens / width, errors_per_s=errors / width)


DISTRIBUTION_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency"))


def distribution(rows, metric: str) -> np.ndarray:
    """The metric's values (ms) over the successful requests, sorted; ITL pools every gap."""
    ok = [r for r in rows if r.get("ok")]
    if metric == "itl":
        values = [x for r in ok for x in (r.get("itls_ms") or ())]
    else:
        values = [r.get(f"{metric}_ms") for r in ok]
    return np.sort(np.asarray([v for v in values if v is not None], dtype=float))


def cdf_points(values: np.ndarray, max_points: int = MAX_CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, fraction <= x) of the sorted values, thinned to at most max_points (the extremes kept)."""
    n = len(values)
    if n == 0:
        return np.empty(0), np.empty(0)
    fractions = np.arange(1, n + 1) / n
    if n <= max_points:
        return values, fractions
    keep = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))
    return values[keep], fractions[keep]
