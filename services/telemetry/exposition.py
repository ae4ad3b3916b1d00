"""Serving a registry's /metrics over HTTP, for workers that have no HTTP server of their own:

    metrics = WorkerMetrics("decode")
    server = MetricsServer(metrics.registry, host="127.0.0.1", port=0)
    await server.start()           # server.port: the bound port
    ...
    await server.stop()

GPU gauges (NVML) are added to the same registry when a GPU is present."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.telemetry.gpu import GpuGauges
from services.telemetry.metrics import CONTENT_TYPE_LATEST, render


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int, with_gpu: bool = True) -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._gpu = GpuGauges(registry) if with_gpu else None
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._requested_port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._gpu is not None:
            self._gpu.update()
        return web.Response(body=render(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
