"""Every Prometheus metric Tandem exports, defined in one place. Each service instance owns its own
CollectorRegistry, so several gateways and workers in one process (tests, the in-process launcher)
never collide, and `/metrics` of one shows only its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Latency buckets (seconds): sub-millisecond gateway paths up to minutes-long requests.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0)
_TOKEN_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_BYTES_BUCKETS = tuple(float(2**p) for p in range(10, 36, 2))

__all__ = ["GatewayMetrics", "WorkerMetrics", "render", "CONTENT_TYPE_LATEST"]


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of one registry."""
    return generate_latest(registry)


class GatewayMetrics:
    """What users feel (TTFT, TPOT, ITL, E2E), what the gateway decides (admissions, rejections by
    reason, queue depth) and the capacity it decides on (KV blocks per worker, from load reports)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("tandem_time_to_first_token_seconds", "Arrival to first token sent",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("tandem_time_per_output_token_seconds",
                              "(E2E - TTFT) / (output tokens - 1), per request",
                              buckets=_TOKEN_TIME_BUCKETS, registry=r)
        self.itl = Histogram("tandem_inter_token_latency_seconds", "Gap between consecutive chunks sent",
                             buckets=_TOKEN_TIME_BUCKETS, registry=r)
        self.e2e = Histogram("tandem_e2e_request_latency_seconds", "Arrival to last token sent",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("tandem_admission_queue_depth", "Requests waiting for capacity",
                                 registry=r)
        self.running = Gauge("tandem_running_requests", "Requests admitted and not finished",
                             registry=r)
        self.admissions = Counter("tandem_admissions", "Requests admitted, by path",
                                  ["path"], registry=r)             # path: immediate | queued
        self.rejections = Counter("tandem_rejections", "Requests refused, by reason",
                                  ["reason"], registry=r)
        self.retries = Counter("tandem_request_retries", "Requests moved to another worker after one failed",
                               ["stage"], registry=r)    # stage: before_first_token | mid_stream
        self.requests = Counter("tandem_requests", "Finished requests by API and outcome",
                                ["api", "outcome"], registry=r)
        self.failures = Counter("tandem_request_failures", "Admitted requests that ended in an error, "
                                "by cause (the error's type)", ["cause"], registry=r)
        self.lease_renewals = Counter("tandem_reservation_renewals", "Decode reservations renewed "
                                      "while their requests waited (prefill queue, transfer)", registry=r)
        self.leases_lost = Counter("tandem_reservations_lost", "Renewals of reservations the decode "
                                   "worker no longer held", registry=r)
        self.prompt_tokens = Counter("tandem_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.generation_tokens = Counter("tandem_generation_tokens", "Tokens streamed to clients",
                                         registry=r)
        self.kv_blocks = Gauge("tandem_kv_blocks", "KV blocks per worker from its load report",
                               ["worker", "state"], registry=r)   # state: used | reserved | free
        self.worker_requests = Gauge("tandem_worker_requests", "Requests per worker from its load report",
                                     ["worker", "state"], registry=r)   # state: running | waiting
        self.prefill_queue_tokens = Gauge("tandem_prefill_queued_tokens",
                                          "Prompt tokens queued per prefill worker", ["worker"], registry=r)
        self.kv_transfer_bytes = Histogram("tandem_kv_transfer_bytes", "KV bytes shipped per request",
                                           buckets=_BYTES_BUCKETS, registry=r)
        self.kv_transfer_seconds = Histogram("tandem_kv_transfer_seconds", "KV transfer time per request",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.worker_up = Gauge("tandem_worker_up", "1 while a worker answers load reports",
                               ["worker", "role"], registry=r)


class WorkerMetrics:
    """A worker's own view: its batch, its KV pool and its transfers. Workers update these and
    expose them with services.telemetry.exposition.MetricsServer."""

    def __init__(self, role: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.role = role
        self.running = Gauge("tandem_worker_running_requests", "Requests in the running batch",
                             registry=r)
        self.waiting = Gauge("tandem_worker_waiting_requests", "Requests waiting to be scheduled",
                             registry=r)
        self.kv_blocks = Gauge("tandem_worker_kv_blocks", "KV blocks by state", ["state"], registry=r)
        self.step_seconds = Histogram("tandem_worker_step_seconds", "Duration of one engine step",
                                      buckets=_TOKEN_TIME_BUCKETS, registry=r)
        self.tokens = Counter("tandem_worker_tokens", "Tokens computed, by kind", ["kind"],
                              registry=r)                      # kind: prompt | generation
        self.kv_transfer_bytes = Counter("tandem_worker_kv_transfer_bytes", "KV bytes sent or received",
                                         ["direction"], registry=r)
        self.kv_transfer_seconds = Histogram("tandem_worker_kv_transfer_seconds", "One page transfer",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("tandem_worker_rejections", "Requests refused, by reason",
                                  ["reason"], registry=r)

    def set_kv_blocks(self, used: int, reserved: int, free: int) -> None:
        self.kv_blocks.labels("used").set(used)
        self.kv_blocks.labels("reserved").set(reserved)
        self.kv_blocks.labels("free").set(free)
