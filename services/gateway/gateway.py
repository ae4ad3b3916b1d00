"""The gateway's lifecycle: load the tokenizer, connect to the workers and wait for their first
load reports, open the public gRPC and HTTP APIs (health: not serving yet), run the warm path
(warm_path.py: real requests to every worker, then every worker settled), then serve, all on
one event loop.

    gateway = Gateway(GatewayConfig(decode_workers=("127.0.0.1:50061",), prefill_workers=(...)))
    await gateway.start()          # gateway.grpc_port / gateway.http_port: the bound ports
    ...
    await gateway.stop()

Workers join and leave while it serves (the autoscaler in `tandem serve` calls these on the
gateway's loop): `await gateway.add_worker(address, "decode")`, `await gateway.retire_worker(address)`
(no new requests, waits for the running ones to finish, then disconnects); over HTTP,
/admin/workers does the same (services/gateway/admin_api.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from services.engine.loader import load_tokenizer
from services.gateway.admission import AdmissionController
from services.gateway.config import GatewayConfig
from services.addresses import bracket_host
from services.gateway.grpc_api import set_serving, start_grpc_server
from services.gateway.http_api import HttpApi, start_http_server
from services.gateway.service import GenerationService
from services.gateway.session import WorkerSession
from services.gateway.warm_path import run_warm_path
from services.gateway.workers import WorkerHandle, WorkerPool
from services.rpc.tandem.v1 import worker_pb2
from services.telemetry.gpu import GpuGauges
from services.telemetry.metrics import GatewayMetrics, render
from services.worker.local_calls import LocalWorker

log = logging.getLogger(__name__)

_LOAD_RPC_TIMEOUT_S = 2.0       # a worker slower than this to report its load counts as down
SHUTDOWN_GRACE_S = 1.0          # open streams get this long to finish when the gateway stops


class Gateway:
    def __init__(self, config: GatewayConfig,
                 local_workers: Callable[[str], LocalWorker | None] = lambda address: None) -> None:
        """local_workers: the workers of the config that live in this process, by address (an
        in-process cluster's): called directly rather than over gRPC."""
        self.config = config
        self._local_workers = local_workers
        self.metrics = GatewayMetrics()
        self._gpu = GpuGauges(self.metrics.registry)
        self.pool: WorkerPool | None = None
        self.admission: AdmissionController | None = None
        self.service: GenerationService | None = None
        self._session: WorkerSession | None = None
        self._warm_admission: AdmissionController | None = None
        self._max_model_len = 0
        self._tokenizer = None
        self._grpc_server = None
        self._health = None
        self._http_runner = None
        self.grpc_port = 0
        self.http_port = 0

    @property
    def grpc_address(self) -> str:
        return f"{bracket_host(self.config.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls is not None else "http"
        return f"{scheme}://{bracket_host(self.config.host)}:{self.http_port}"

    async def start(self) -> None:
        """Returns once serving: the workers have reported, both APIs listen, and the warm path
        (warm_path.py) has run; until then gRPC health says NOT_SERVING, /health 503, and
        generation requests are refused (UNAVAILABLE)."""
        cfg = self.config
        loaded = await asyncio.to_thread(load_tokenizer, cfg.model)
        # The workers' load reports say what they take; the model's limit holds until they do.
        self._max_model_len = cfg.max_model_len or loaded.config.max_position_embeddings
        self._tokenizer = loaded.tokenizer
        self.pool = WorkerPool(cfg.prefill_workers, cfg.decode_workers, cfg.load_poll_interval_s,
                               min(cfg.worker_rpc_timeout_s, _LOAD_RPC_TIMEOUT_S),
                               on_reports=self._on_reports, colocated=not self._disaggregated,
                               cluster_token=cfg.cluster_token, local=self._local_workers)
        self.admission, self._session, self.service = self._routing_core(self.metrics)
        self.service.ready = False
        try:
            await self.pool.start(cfg.worker_ready_timeout_s)
            self._grpc_server, self.grpc_port, self._health = await start_grpc_server(
                self.service, cfg.host, cfg.grpc_port, cfg.tls)
            api = HttpApi(self.service, self.render_metrics, self.is_healthy, gateway=self)
            self._http_runner, self.http_port = await start_http_server(
                api, cfg.host, cfg.http_port, SHUTDOWN_GRACE_S,
                cfg.tls.ssl_context() if cfg.tls is not None else None)
            await self._warm_up()
            self.service.ready = True
            await set_serving(self._health)
        except BaseException:
            await self.stop()
            raise
        log.info("gateway serving %s (%s): gRPC %s, HTTP %s", cfg.model_id, cfg.mode,
                 self.grpc_address, self.http_url)

    @property
    def _disaggregated(self) -> bool:
        return self.config.mode == "disaggregated"

    def _routing_core(self, metrics: GatewayMetrics) -> tuple[AdmissionController, WorkerSession,
                                                              GenerationService]:
        """Admission, session and service over the worker pool, recording into `metrics`."""
        cfg = self.config
        admission = AdmissionController(cfg.admission, self.pool, metrics, self._disaggregated)
        session = WorkerSession(self.pool, admission, metrics, disaggregated=self._disaggregated,
                                kv_transport=cfg.kv_transport, reservation_ttl_s=cfg.reservation_ttl_s,
                                rpc_timeout_s=cfg.worker_rpc_timeout_s)
        service = GenerationService(
            model_id=cfg.model_id, max_model_len=self._max_model_len, tokenizer=self._tokenizer,
            api_keys=cfg.api_keys, request_timeout_s=cfg.request_timeout_s,
            admission=admission, session=session, metrics=metrics)
        return admission, session, service

    async def _warm_up(self) -> None:
        """The warm path on a routing core of its own, whose metrics are then dropped."""
        timeout_s = self.config.warm_path_timeout_s
        if not timeout_s:
            return
        admission, session, service = self._routing_core(GatewayMetrics())
        self._warm_admission = admission
        try:
            report = await run_warm_path(service, self.pool, self._disaggregated, timeout_s)
        finally:
            self._warm_admission = None
            await session.drain()
        if report.problem:
            log.warning("warm path: %d of %d routes done in %.2fs; serving anyway: %s",
                        report.completed, report.routes, report.seconds, report.problem)
        else:
            log.info("warm path: %d routes, one request each, in %.2fs, slowest first token %.0f ms; "
                     "every worker settled", report.routes, report.seconds,
                     report.slowest_first_token_s * 1e3)

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        http, self._http_runner = self._http_runner, None
        grpc_server, self._grpc_server = self._grpc_server, None
        # Both APIs drain at once: open streams get grace_s in all, then are cancelled.
        await asyncio.gather(http.cleanup() if http else asyncio.sleep(0),
                             grpc_server.stop(grace_s) if grpc_server else asyncio.sleep(0))
        if self._session is not None:
            await self._session.drain()
        if self.pool is not None:
            await self.pool.stop()
            self.pool = None

    async def __aenter__(self) -> "Gateway":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def add_worker(self, address: str, role: str) -> None:
        """Routes to a new worker once it has answered a load report."""
        await self.pool.add(address, role, self.config.worker_ready_timeout_s)

    async def retire_worker(self, address: str, timeout_s: float | None = None) -> WorkerHandle:
        """Drains the worker (nothing new is routed to it; its running requests finish there),
        then disconnects it; returns its handle, with its last report. timeout_s (default: the
        request timeout) bounds the wait; past it the worker is back in service and TimeoutError."""
        worker = self.pool.drain(address)
        try:
            await self.pool.wait_idle(address, timeout_s or self.config.request_timeout_s)
        except BaseException:
            worker.draining = False       # not retired after all: it serves again
            raise
        await self.pool.remove(address)
        m = self.metrics
        for gauge, labels in ((m.worker_up, [(address, worker.role)]),
                              (m.worker_requests, [(address, "running"), (address, "waiting")]),
                              (m.kv_blocks, [(address, s) for s in ("free", "reserved", "used")]),
                              (m.prefill_queue_tokens, [(address,)])):
            for label in labels:
                try:
                    gauge.remove(*label)
                except KeyError:
                    pass        # never set for this worker's role
        return worker

    def is_healthy(self) -> bool:
        pool = self.pool
        if pool is None or self.service is None or not self.service.ready:
            return False
        if not any(w.healthy for w in pool.decode):
            return False
        return self.config.mode == "colocated" or any(w.healthy for w in pool.prefill)

    def render_metrics(self) -> bytes:
        self._gpu.update()
        return render(self.metrics.registry)

    def _on_reports(self) -> None:
        """Fresh load reports: update the capacity gauges and let queued requests in."""
        m = self.metrics
        for w in self.pool.all:
            m.worker_up.labels(w.address, w.role).set(1 if w.healthy else 0)
            r = w.report
            if r is None:
                continue
            m.worker_requests.labels(w.address, "running").set(r.running_requests)
            m.worker_requests.labels(w.address, "waiting").set(r.waiting_requests)
            if w.role == "decode" or r.role == worker_pb2.WORKER_ROLE_COLOCATED:
                m.kv_blocks.labels(w.address, "free").set(r.free_blocks)
                m.kv_blocks.labels(w.address, "reserved").set(r.reserved_blocks)
                m.kv_blocks.labels(w.address, "used").set(r.num_blocks - r.free_blocks)
            else:
                m.prefill_queue_tokens.labels(w.address).set(w.queued_prompt_tokens)
        for admission in (self.admission, self._warm_admission):
            if admission is not None:
                admission.on_capacity_change()
