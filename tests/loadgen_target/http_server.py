"""The target's OpenAI-compatible side: /v1/completions and /v1/chat/completions streamed as
SSE with a usage chunk, /v1/models, /health."""

from __future__ import annotations

import asyncio
import itertools
import json
from time import perf_counter

from aiohttp import web

from tests.loadgen_target.behaviour import EmissionLog, Fate, TargetBehaviour, prompt_tokens

TOKEN_TEXT = " tok"


async def sleep_until(when: float) -> None:
    delay = when - perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def build_app(behaviour: TargetBehaviour, counter: itertools.count, log: EmissionLog,
              slots: "asyncio.Semaphore | None" = None) -> web.Application:
    """slots: shared with the gRPC side; a stream's schedule starts when it gets one."""
    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def unauthorized(request: web.Request) -> bool:
        return bool(behaviour.api_key) and request.headers.get("Authorization") != f"Bearer {behaviour.api_key}"

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(log.summary())

    async def models(request: web.Request) -> web.Response:
        if unauthorized(request):
            return web.json_response({"error": {"message": "bad api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": behaviour.model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _generate(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await _generate(request, chat=True)

    async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = perf_counter()
        if unauthorized(request):
            return web.json_response({"error": {"message": "bad api key"}}, status=401)
        body = await request.json()
        fate = behaviour.fate(next(counter))
        if fate is Fate.ERROR:
            return web.json_response({"error": {"message": "injected error"}}, status=behaviour.error_status)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        n = behaviour.num_tokens(body.get("max_tokens"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            if slots is None:
                await _stream(request, resp, arrival, body, prompt, n, fate, chat)
            else:
                async with slots:              # a server at capacity: waiting shows as TTFT
                    await _stream(request, resp, perf_counter(), body, prompt, n, fate, chat)
        except ConnectionResetError:
            pass                               # the client left (timeout, Ctrl-C): nothing to send to
        return resp

    async def _stream(request, resp, arrival, body, prompt, n, fate, chat) -> None:
        sent = 0
        for k in range(n):
            if fate is Fate.STALL and k == behaviour.stall_after:
                while not request.transport.is_closing():
                    await asyncio.sleep(0.05)
                return
            if fate is Fate.CLOSE and k == behaviour.close_after:
                request.transport.close()
                return
            finish = "length" if k == n - 1 else None
            choice = ({"index": 0, "delta": {"content": TOKEN_TEXT}, "finish_reason": finish} if chat
                      else {"index": 0, "text": TOKEN_TEXT, "finish_reason": finish})
            event = b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"
            due = behaviour.token_time(arrival, k)
            await sleep_until(due)
            await resp.write(event)
            log.wrote(k, due, perf_counter())
            sent += 1
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt_tokens(prompt), "completion_tokens": sent,
                     "total_tokens": prompt_tokens(prompt) + sent}
            await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app
