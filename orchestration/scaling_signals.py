"""The autoscaler's inputs, read from a running gateway: its worker pool (load reports), its
admission controller (queue, prefill wait estimate) and its latency histograms.

SLO attainment over a window comes from the TTFT / TPOT histograms: the share of the requests
observed in the window that fell in the buckets at or below the SLO (the largest bucket bound not
above it, so the count never flatters)."""

from __future__ import annotations

import bisect
from collections import deque

from prometheus_client import Histogram

from orchestration.scaling_policy import ScalingSignals


class SloWindow:
    """Requests within `slo_s` over the last `window_s` seconds, from one histogram's counts."""

    def __init__(self, histogram: Histogram, slo_s: float, window_s: float) -> None:
        self._histogram = histogram
        self._window_s = window_s
        bounds = sorted(self._buckets().keys())
        i = bisect.bisect_right(bounds, slo_s)
        self._bound = bounds[i - 1] if i else bounds[0]
        self._snapshots: deque[tuple[float, float, float]] = deque()   # (t, within, total)

    def _buckets(self) -> dict[float, float]:
        out = {}
        for metric in self._histogram.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    out[float(sample.labels["le"])] = sample.value
        return out

    def attainment(self, now: float) -> float | None:
        """None when no request was observed in the window."""
        buckets = self._buckets()
        within, total = buckets[self._bound], buckets[float("inf")]
        self._snapshots.append((now, within, total))
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - self._window_s:
            self._snapshots.popleft()
        _, within_then, total_then = self._snapshots[0]
        if total == total_then:
            return None
        return (within - within_then) / (total - total_then)


class GatewaySignals:
    def __init__(self, gateway, max_num_seqs: int, ttft_slo_s: float, tpot_slo_s: float,
                 window_s: float) -> None:
        """max_num_seqs: what one decode worker batches (its running requests' capacity)."""
        self._gateway = gateway
        self._max_num_seqs = max_num_seqs
        metrics = gateway.metrics
        self._ttft = SloWindow(metrics.ttft, ttft_slo_s, window_s)
        self._tpot = SloWindow(metrics.tpot, tpot_slo_s, window_s)

    def read(self, now: float) -> ScalingSignals:
        pool, admission = self._gateway.pool, self._gateway.admission
        prefill = [w for w in pool.prefill if w.accepting]
        decode = [w for w in pool.decode if w.accepting and w.report is not None]
        blocks = sum(w.num_blocks for w in decode)
        # A reservation takes its blocks from the pool: they are already outside free_blocks.
        taken = sum(w.report.num_blocks - w.report.free_blocks for w in decode)
        running = sum(w.running_requests for w in decode)
        return ScalingSignals(
            now=now, prefill_workers=len(prefill), decode_workers=len([w for w in pool.decode if w.accepting]),
            prefill_wait_s=admission.prefill_wait_s(0),
            prefill_queued_tokens=sum(w.queued_prompt_tokens for w in prefill),
            kv_utilization=min(1.0, taken / blocks) if blocks else 0.0,
            running_fraction=running / (self._max_num_seqs * len(decode)) if decode else 0.0,
            queued_requests=admission.queued,
            ttft_attainment=self._ttft.attainment(now), tpot_attainment=self._tpot.attainment(now))
