"""A worker is ready once its engine has warmed up (kernels compiled, CUDA graphs captured), not
when its port opens. Until then its gRPC server answers standard health checks with NOT_SERVING
and every other call with UNAVAILABLE ("warming up"), so neither a gateway's load poll nor a
stray request reaches a cold engine; `set_serving()` opens it.

    readiness = Readiness("tandem.v1.DecodeWorker")
    server = grpc.aio.server(interceptors=[readiness.interceptor])
    readiness.add_to(server)
    ... warm up ...
    await readiness.set_serving()"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

_HEALTH_METHODS = f"/{health.SERVICE_NAME}/"
WARMING_UP = "the worker is warming up; it serves once its engine is ready"
STOPPING = "the worker is stopping"


class Readiness:
    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.ready = False
        self.reason = WARMING_UP            # why calls are refused while not ready
        self.health = health.aio.HealthServicer()
        self.interceptor = _ColdGate(self)

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

    async def set_not_serving(self, reason: str = WARMING_UP) -> None:
        self.ready, self.reason = False, reason
        for name in ("", self.service_name):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_serving(self) -> None:
        for name in ("", self.service_name):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.ready = True


class _ColdGate(grpc.aio.ServerInterceptor):
    """Refuses every call but health checks while the worker is not ready."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if self._readiness.ready or handler is None or details.method.startswith(_HEALTH_METHODS):
            return handler

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, self._readiness.reason)

        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        return make[handler.request_streaming, handler.response_streaming](
            refuse, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
