"""The OpenAI-compatible HTTP API (aiohttp): /v1/completions and /v1/chat/completions (JSON or SSE
streaming, stream_options.include_usage), /v1/models (and /v1/models/{id}), /health and /metrics
(Prometheus text), and /admin/workers (admin_api.py: workers join and leave).
Errors become HTTP codes here and only here (via services/gateway/status.py), as OpenAI error
objects; 429 and 503 carry Retry-After."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Callable

from aiohttp import web

from services.engine.errors import InvalidRequestError, TandemError
from services.gateway.openai_protocol import OpenAIRequest, parse_request
from services.gateway.openai_responses import SSE_DONE, ResponseWriter, sse_event
from services.gateway.request import GenerationDelta, PreparedRequest
from services.gateway.service import GenerationService
from services.gateway.status import client_error, openai_error_body
from services.telemetry.metrics import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16      # the OpenAI default for /v1/completions
# A whole 128k-token prompt is well under this; tokenizing more would hold the event loop (every
# open stream) for seconds. Larger bodies get 413. The gRPC API's own limit is 4 MiB too.
MAX_BODY_BYTES = 4 * 2**20


def error_response(exc: BaseException) -> web.Response:
    if not isinstance(exc, TandemError):
        log.exception("unexpected error in the HTTP API", exc_info=exc)
    err = client_error(exc)
    headers = {"Retry-After": err.retry_after_header} if err.retry_after_header else None
    return web.json_response(openai_error_body(err), status=err.http_status, headers=headers)


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("X-Api-Key")


@web.middleware
async def _json_http_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method, body too large) as OpenAI error objects."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": {"message": f"{request.method} {request.path}: {exc.reason}",
                          "type": "invalid_request_error", "param": None, "code": exc.status}}
        return web.json_response(body, status=exc.status)


class HttpApi:
    def __init__(self, service: GenerationService, render_metrics: Callable[[], bytes],
                 is_healthy: Callable[[], bool], gateway=None) -> None:
        """gateway: given, /admin/workers adds and retires its workers (admin_api.py)."""
        self._service = service
        self._render_metrics = render_metrics
        self._is_healthy = is_healthy
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_http_errors])
        self.app.add_routes([
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
            web.get("/v1/models", self.models),
            web.get("/v1/models/{model:.+}", self.model),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
        ])
        if gateway is not None:
            from services.gateway.admin_api import AdminApi
            self.app.add_routes(AdminApi(gateway, service.authenticate, error_response, _bearer).routes())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def models(self, request: web.Request) -> web.Response:
        try:
            self._service.authenticate(_bearer(request))
        except TandemError as exc:
            return error_response(exc)
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        try:
            self._service.authenticate(_bearer(request))
            self._service.check_model(request.match_info["model"])
        except TandemError as exc:
            return error_response(exc)
        return web.json_response(self._model_card())

    def _model_card(self) -> dict:
        return {"id": self._service.model_id, "object": "model", "created": 0, "owned_by": "tandem",
                "max_model_len": self._service.max_model_len}

    async def health(self, request: web.Request) -> web.Response:
        healthy = self._is_healthy()
        return web.json_response({"status": "ok" if healthy else "unavailable"},
                                 status=200 if healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._render_metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            req, oa = await self._prepare(request, chat)
        except web.HTTPException:
            raise                   # aiohttp's own (body too large): the middleware renders it
        except Exception as exc:  # noqa: BLE001 - the edge: every error becomes a status
            return error_response(exc)
        svc = self._service
        writer = ResponseWriter(chat, svc.model_id, req.request_id, svc.tokenizer)
        deltas = svc.generate(req, "http")
        async with contextlib.aclosing(deltas):
            try:
                first = await anext(deltas)    # admission and TTFT happen here: errors are plain HTTP
                if not oa.stream:
                    collected = [first] + [d async for d in deltas]
                    return web.json_response(writer.full_response(collected, oa.logprobs is not None),
                                             dumps=lambda o: json.dumps(o, ensure_ascii=False))
            except Exception as exc:  # noqa: BLE001
                return error_response(exc)
            return await self._stream(request, writer, oa, first, deltas)

    async def _prepare(self, request: web.Request, chat: bool) -> tuple[PreparedRequest, OpenAIRequest]:
        svc = self._service
        tenant = svc.authenticate(_bearer(request))
        try:
            body = json.loads(await request.read())
        except (ValueError, RecursionError) as exc:    # bad JSON, bad UTF-8, absurd nesting
            raise InvalidRequestError("body", f"malformed JSON: {exc}") from None
        oa = parse_request(body, chat)
        svc.check_model(oa.model)
        if chat:
            ids = svc.encode_chat(list(oa.messages))
            default_max = svc.default_max_tokens(len(ids))
        else:
            ids = list(oa.prompt_token_ids) if oa.prompt_token_ids else svc.encode_text(oa.prompt_text)
            default_max = COMPLETIONS_DEFAULT_MAX_TOKENS
        return svc.prepare(ids, oa.params(default_max), tenant), oa

    async def _stream(self, request: web.Request, writer: ResponseWriter, oa: OpenAIRequest,
                      delta: GenerationDelta, deltas) -> web.StreamResponse:
        """Server-sent events from the first delta on; an error after that is an error event."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        want_logprobs = oa.logprobs is not None
        try:
            while True:
                await response.write(writer.chunk(delta, want_logprobs, oa.include_usage))
                if delta.finish_reason is not None:
                    break
                delta = await anext(deltas)
        except ConnectionError:
            return response          # the client went away; closing `deltas` cancels the request
        except Exception as exc:  # noqa: BLE001 - mid-stream: an error event, then the end
            if not isinstance(exc, TandemError):
                log.exception("unexpected error while streaming", exc_info=exc)
            await response.write(sse_event(openai_error_body(client_error(exc))))
            return response
        if oa.include_usage and delta.usage is not None:
            await response.write(writer.usage_chunk(delta.usage))
        await response.write(SSE_DONE)
        await response.write_eof()
        return response


async def start_http_server(api: HttpApi, host: str, port: int,
                            shutdown_grace_s: float) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a client that disconnects cancels its handler, hence its request.
    # On shutdown, streams still open after the grace period are cancelled the same way (aiohttp
    # waits its timeout twice: for handlers to finish, then for them to stop).
    runner = web.AppRunner(api.app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=shutdown_grace_s / 2)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]
