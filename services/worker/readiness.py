"""A worker is ready once its engine has warmed up (kernels compiled, CUDA graphs captured), not
when its port opens. Until then its gRPC server answers standard health checks with NOT_SERVING
and its RPCs refuse every call with NotReadyError (UNAVAILABLE, "warming up": the check sits in
the error edge that wraps every handler, services/worker/edge.py), so neither a gateway's load
poll nor a stray request reaches a cold engine; `set_serving()` opens it, and a stopping worker
closes it again.

    readiness = Readiness("tandem.v1.DecodeWorker")
    readiness.add_to(server); await readiness.set_not_serving()
    ... warm up ...
    await readiness.set_serving()"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.engine.errors import TandemError

WARMING_UP = "the worker is warming up; it serves once its engine is ready"
STOPPING = "the worker is stopping"


class NotReadyError(TandemError):
    """The worker does not serve yet (warming up) or any more (stopping): UNAVAILABLE."""


class Readiness:
    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.ready = False
        self.reason = WARMING_UP            # why calls are refused while not ready
        self.health = health.aio.HealthServicer()

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReadyError(self.reason)

    async def set_not_serving(self, reason: str = WARMING_UP) -> None:
        self.ready, self.reason = False, reason
        for name in ("", self.service_name):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_serving(self) -> None:
        for name in ("", self.service_name):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.ready = True
