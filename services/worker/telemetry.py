"""A worker's Prometheus metrics (services/telemetry's WorkerMetrics), updated after every engine
step from the engine thread (a few gauge writes), and served on their own /metrics port when
`WorkerConfig.metrics_port` is set."""

from __future__ import annotations

from typing import Callable, Sequence

from services.engine.outputs import RequestOutput
from services.telemetry.exposition import MetricsServer
from services.telemetry.metrics import WorkerMetrics
from services.worker.prompt_counter import PromptTokenCounter


class WorkerTelemetry:
    def __init__(self, role: str, engine, prompt_counter: PromptTokenCounter,
                 reserved_blocks: Callable[[], int] = lambda: 0) -> None:
        self.metrics = WorkerMetrics(role)
        self._engine = engine
        self._prompt_counter = prompt_counter
        self._reserved_blocks = reserved_blocks
        self._prompt_tokens_seen = 0
        self._server: MetricsServer | None = None

    def on_step(self, seconds: float, outputs: Sequence[RequestOutput]) -> None:
        m, kv, scheduler = self.metrics, self._engine.kv, self._engine.scheduler
        m.step_seconds.observe(seconds)
        m.running.set(len(scheduler.running))
        m.waiting.set(len(scheduler.waiting))
        reserved = self._reserved_blocks()
        m.set_kv_blocks(kv.num_blocks - kv.num_free_blocks - reserved, reserved, kv.num_free_blocks)
        prompt = self._prompt_counter.prompt_tokens
        m.tokens.labels("prompt").inc(prompt - self._prompt_tokens_seen)
        self._prompt_tokens_seen = prompt
        m.tokens.labels("generation").inc(sum(len(o.new_token_ids) for o in outputs))

    def transferred(self, direction: str, num_bytes: int, seconds: float | None = None) -> None:
        self.metrics.kv_transfer_bytes.labels(direction).inc(num_bytes)
        if seconds is not None:
            self.metrics.kv_transfer_seconds.observe(seconds)

    async def start(self, host: str, port: int | None) -> int | None:
        """Serves /metrics on port (0: a free one); None: no endpoint. Returns the bound port."""
        if port is None:
            return None
        self._server = MetricsServer(self.metrics.registry, host, port)
        await self._server.start()
        return self._server.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
