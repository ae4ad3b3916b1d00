"""The autoscaler: every `interval_s` it reads the gateway's signals (scaling_signals.py), asks the
policy (scaling_policy.py) and carries out its decisions on the cluster (any launcher):

- up: the cluster starts a worker of the role in a free slot of its plan; once it is ready the
  gateway routes to it;
- down: the gateway drains the role's least-loaded worker (nothing new is routed to it; its
  running requests finish there), then the cluster stops it. Nothing is lost.

Decisions of one tick run together and the next tick waits for them, so the policy always sees
the fleet as it is. Each decision is logged with its reason and counted in
`tandem_scaling_decisions_total{role,direction,reason}`; `tandem_workers{role}` follows the
workers the gateway routes to. Both live in the gateway's registry, so /metrics exports them.

    autoscaler = Autoscaler(AutoscalerConfig(policy=...), gateway, cluster, max_num_seqs=64)
    await autoscaler.start()   ...   await autoscaler.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from orchestration.scaling_policy import UP, ScalingDecision, ScalingPolicy, ScalingPolicyConfig
from orchestration.scaling_signals import GatewaySignals
from services.engine.errors import ConfigError

log = logging.getLogger("tandem.autoscaler")


@dataclass(frozen=True)
class AutoscalerConfig:
    policy: ScalingPolicyConfig = field(default_factory=ScalingPolicyConfig)
    interval_s: float = 1.0             # one look at the signals
    ttft_slo_s: float = 1.0
    tpot_slo_s: float = 0.1
    slo_window_s: float = 30.0          # attainment over this much recent time
    drain_timeout_s: float | None = None  # None: the gateway's request timeout

    def __post_init__(self) -> None:
        for name in ("interval_s", "ttft_slo_s", "tpot_slo_s", "slo_window_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.drain_timeout_s is not None and self.drain_timeout_s <= 0:
            raise ConfigError(f"drain_timeout_s must be > 0, got {self.drain_timeout_s}")


class ScalingMetrics:
    def __init__(self, registry) -> None:
        self.workers = Gauge("tandem_workers", "Workers the gateway routes to, by role", ["role"],
                             registry=registry)
        self.decisions = Counter("tandem_scaling_decisions", "Autoscaler decisions carried out",
                                 ["role", "direction", "reason"], registry=registry)
        self.failures = Counter("tandem_scaling_failures", "Autoscaler decisions that could not be "
                                "carried out", ["role", "direction"], registry=registry)


class Autoscaler:
    def __init__(self, config: AutoscalerConfig, gateway, cluster, max_num_seqs: int,
                 metrics: ScalingMetrics | None = None) -> None:
        """gateway: a started services.gateway.gateway.Gateway (this loop); cluster: a started
        orchestration.cluster.Cluster whose workers the gateway routes to; metrics: registered
        once per gateway (None: registered here)."""
        self.config = config
        self._gateway = gateway
        self._cluster = cluster
        self.policy = ScalingPolicy(config.policy)
        self._signals = GatewaySignals(gateway, max_num_seqs, config.ttft_slo_s, config.tpot_slo_s,
                                       config.slo_window_s)
        self.metrics = metrics or ScalingMetrics(gateway.metrics.registry)
        self.decisions: list[ScalingDecision] = []   # carried out, in order
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._count_workers()
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            await self.tick()

    async def tick(self) -> list[ScalingDecision]:
        decisions = self.policy.decide(self._signals.read(time.monotonic()))
        await asyncio.gather(*(self._carry_out(d) for d in decisions))
        self._count_workers()
        return decisions

    async def _carry_out(self, d: ScalingDecision) -> None:
        log.info("scaling %s %s: %s (%s)", d.role, d.direction, d.reason, d.detail)
        try:
            if d.direction == UP:
                address = await asyncio.to_thread(self._cluster.add_worker, d.role)
                await self._gateway.add_worker(address, d.role)
                log.info("scaled %s up: %s joined", d.role, address)
            else:
                address = self._pick_retiree(d.role)
                await self._gateway.retire_worker(address, self.config.drain_timeout_s)
                await asyncio.to_thread(self._cluster.remove_worker, address)
                log.info("scaled %s down: %s drained and stopped", d.role, address)
        except Exception:
            # The fleet is as the gateway sees it; the policy retries after its cool-down.
            log.exception("scaling %s %s failed", d.role, d.direction)
            self.metrics.failures.labels(d.role, d.direction).inc()
            return
        self.metrics.decisions.labels(d.role, d.direction, d.reason).inc()
        self.decisions.append(d)

    def _pick_retiree(self, role: str) -> str:
        """The least-loaded worker of the role this cluster runs (latest started among equals)."""
        workers = [w for w in (self._gateway.pool.prefill if role == "prefill" else self._gateway.pool.decode)
                   if w.accepting and w.address in self._cluster.running]
        if not workers:
            raise ConfigError(f"no {role} worker of this cluster to retire")
        load = (lambda w: w.queued_prompt_tokens) if role == "prefill" else (lambda w: w.running_requests)
        order = list(self._cluster.running)
        return min(workers, key=lambda w: (load(w), -order.index(w.address))).address

    def _count_workers(self) -> None:
        pool = self._gateway.pool
        for role in self.config.policy.roles:
            workers = pool.prefill if role == "prefill" else pool.decode
            self.metrics.workers.labels(role).set(sum(w.accepting for w in workers))
