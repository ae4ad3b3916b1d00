"""The public gRPC API: tandem.v1.Generation (Generate, ListModels), standard health checking and
server reflection, on one grpc.aio server. Errors become statuses here and only here (via
services/gateway/status.py); RESOURCE_EXHAUSTED and UNAVAILABLE carry a `retry-after` trailer."""

from __future__ import annotations

import logging
from typing import Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services import wire
from services.addresses import bracket_host
from services.engine.errors import InvalidRequestError, TandemError
from services.gateway.request import GenerationDelta
from services.gateway.service import GenerationService
from services.gateway.status import client_error
from services.rpc.tandem.v1 import generation_pb2, generation_pb2_grpc
from services.security.tls import TlsConfig

log = logging.getLogger(__name__)

GENERATION_SERVICE = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name

# gRPC core cancels incoming calls beyond 1000 not yet picked up by the application (3000 hard):
# a burst of new streams (thousands of clients connecting at once) must queue, not fail.
# Admission control, not the transport, decides who is refused.
SERVER_OPTIONS = (("grpc.server.max_pending_requests", 1 << 16),
                  ("grpc.server.max_pending_requests_hard_limit", 1 << 16),
                  ("grpc.so_reuseport", 0))


class UndecodableRequest:
    """What a request that is not the method's message parses to, so that the handler refuses it
    as INVALID_ARGUMENT (grpc's own deserializer failure would reach the client as UNKNOWN)."""

    def __init__(self, message_type: str, reason: str) -> None:
        self.message_type = message_type
        self.reason = reason

    def error(self) -> InvalidRequestError:
        return InvalidRequestError("request", f"not a valid {self.message_type}: {self.reason}")


def lenient_deserializer(message_cls) -> Callable[[bytes], object]:
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(message_cls.DESCRIPTOR.full_name, str(exc))
    return parse


def add_generation_service(servicer: "GenerationServicer", server: grpc.aio.Server) -> None:
    """generation_pb2_grpc.add_GenerationServicer_to_server, with undecodable requests handed to the
    handler instead of failing inside grpc."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, request_deserializer=lenient_deserializer(generation_pb2.GenerateRequest),
            response_serializer=generation_pb2.GenerateResponse.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, request_deserializer=lenient_deserializer(generation_pb2.ListModelsRequest),
            response_serializer=generation_pb2.ListModelsResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(GENERATION_SERVICE, handlers),))
    server.add_registered_method_handlers(GENERATION_SERVICE, handlers)


def api_key_from_metadata(metadata) -> str | None:
    """`authorization: Bearer KEY` (as HTTP) or `x-api-key: KEY`."""
    for key, value in metadata or ():
        if key == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
        if key == "x-api-key":
            return value.strip()
    return None


def response_from_delta(request_id: str, delta: GenerationDelta) -> generation_pb2.GenerateResponse:
    msg = generation_pb2.GenerateResponse(
        request_id=request_id, token_ids=delta.token_ids, text=delta.text,
        logprobs=wire.logprobs_to_proto(delta.logprobs),
        finish_reason=wire.finish_reason_to_proto(delta.finish_reason))
    if delta.usage is not None:
        msg.usage.CopyFrom(generation_pb2.Usage(prompt_tokens=delta.usage.prompt_tokens,
                                                completion_tokens=delta.usage.completion_tokens,
                                                cached_prompt_tokens=delta.usage.cached_prompt_tokens))
    return msg


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, service: GenerationService) -> None:
        self._service = service

    async def Generate(self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            svc = self._service
            tenant = svc.authenticate(api_key_from_metadata(context.invocation_metadata()))
            if isinstance(request, UndecodableRequest):
                raise request.error()
            svc.check_model(request.model)
            params = wire.sampling_from_proto(request.sampling if request.HasField("sampling") else None)
            kind = request.WhichOneof("prompt")
            if kind is None:
                raise InvalidRequestError("prompt", "set text or token_ids")
            if kind == "text":
                ids, field = svc.encode_text(request.text, "text"), "text"
            else:
                ids, field = list(request.token_ids.ids), "token_ids"
            req = svc.prepare(ids, params, tenant, request.request_id, prompt_field=field)
            async for delta in svc.generate(req, "grpc"):
                yield response_from_delta(req.request_id, delta)
        except Exception as exc:  # noqa: BLE001 - the edge: every error becomes a status
            await _abort(context, exc)

    async def ListModels(self, request, context):
        if isinstance(request, UndecodableRequest):
            await _abort(context, request.error())
        return generation_pb2.ListModelsResponse(models=[generation_pb2.ModelInfo(
            id=self._service.model_id, max_model_len=self._service.max_model_len)])


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if not isinstance(exc, TandemError):
        log.exception("unexpected error in Generate")
    err = client_error(exc)
    if err.retry_after_header is not None:
        context.set_trailing_metadata((("retry-after", err.retry_after_header),))
    await context.abort(err.grpc_code, err.message)


async def start_grpc_server(service: GenerationService, host: str, port: int,
                            tls: TlsConfig | None = None) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started server, the port it bound, and its health servicer: NOT_SERVING until
    `set_serving` (the gateway calls it once warmed up), and again on stop."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_generation_service(GenerationServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (GENERATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{bracket_host(host)}:{port}"
    bound = (server.add_secure_port(address, tls.grpc_credentials()) if tls is not None
             else server.add_insecure_port(address))
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    for name in ("", GENERATION_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    return server, bound, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", GENERATION_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
