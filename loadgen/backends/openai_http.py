"""OpenAI-compatible HTTP backend (vLLM, SGLang, TGI, Tandem's gateway): `/v1/completions` or
`/v1/chat/completions`, streamed as server-sent events, with `stream_options.include_usage` so
the server reports its own token counts."""

from __future__ import annotations

import json
from time import perf_counter

import aiohttp

from loadgen.backends.base import Backend
from loadgen.backends.sse import SSEDecoder, SSEError
from loadgen.errors import TargetUnreachableError
from loadgen.records import BenchRequest, RequestRecord

DEFAULT_ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
IDLE_KEEPALIVE_S = 3.0


async def _mark_sent(_session, context, _params) -> None:
    if isinstance(context.trace_request_ctx, RequestRecord):
        context.trace_request_ctx.sent = perf_counter()


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class OpenAIBackend(Backend):
    """`chat` picks the chat endpoint (messages in, `delta.content` out)."""

    def __init__(self, config, chat: bool) -> None:
        super().__init__(config)
        self.chat = chat
        base = config.base_url.rstrip("/")
        self.url = base + (config.endpoint or DEFAULT_ENDPOINTS["openai-chat" if chat else "openai"])
        self.models_url = base + "/v1/models"
        self._session: aiohttp.ClientSession | None = None

    async def open(self, expected_streams: int) -> None:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        # limit=0: the connector must never cap concurrency below what the load asks for.
        # Idle connections are dropped before the common servers drop them (uvicorn: 5 s), so a
        # slow open loop never reuses a socket the server already closed (a spurious failure).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=IDLE_KEEPALIVE_S)
        # The send time is taken when the request's body has been written to the socket, so the
        # client's own request building shows as queueing (sent - scheduled), not as TTFT.
        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(_mark_sent)
        self._session = aiohttp.ClientSession(connector=connector, headers=headers, trace_configs=[trace],
                                              timeout=aiohttp.ClientTimeout(total=None),
                                              auto_decompress=False)
        await self._check_target()

    async def _check_target(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.connect_timeout_s)
        try:
            async with self._session.get(self.models_url, timeout=timeout) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TargetUnreachableError(f"cannot reach {self.config.base_url}: "
                                         f"{type(exc).__name__}: {exc or 'timed out'}") from None
        if status in (401, 403):
            raise TargetUnreachableError(f"{self.models_url} refused the API key (HTTP {status})")
        if self.model is None:
            try:
                self.model = json.loads(body)["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise TargetUnreachableError(f"{self.models_url} answered HTTP {status} without a model "
                                             f"list; pass --model") from None

    def _payload(self, request: BenchRequest) -> bytes:
        body: dict = {"model": self.model, "max_tokens": request.output_len, "stream": True,
                      "stream_options": {"include_usage": True}}
        if self.chat:
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        if self.config.ignore_eos:
            body["ignore_eos"] = True          # vLLM / SGLang / Tandem extension
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        return json.dumps(body).encode()

    async def stream(self, request: BenchRequest, record: RequestRecord) -> None:
        try:
            async with self._session.post(self.url, data=self._payload(request), trace_request_ctx=record) as resp:
                if resp.status != 200:
                    record.fail(str(resp.status), (await resp.text(errors="replace")).strip())
                    return
                await self._consume(resp, record)
        except SSEError as exc:
            record.fail("bad_event", str(exc))
        except aiohttp.ClientPayloadError as exc:
            record.fail("stream_closed", str(exc))
        except (aiohttp.ServerDisconnectedError, ConnectionResetError) as exc:
            record.fail("stream_closed", f"{type(exc).__name__}: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            record.fail("connection_error", f"{type(exc).__name__}: {exc}")

    async def _consume(self, resp: aiohttp.ClientResponse, record: RequestRecord) -> None:
        decoder = SSEDecoder()
        done = False
        async for data in resp.content.iter_any():
            now = perf_counter()               # arrival time first, parsing after
            for payload in decoder.feed(data):
                done = self._on_event(payload, now, record) or done
        for payload in decoder.flush():
            done = self._on_event(payload, perf_counter(), record) or done
        if not done and record.error is None:
            record.fail("stream_closed", "stream ended before [DONE]")

    def _on_event(self, payload: str, now: float, record: RequestRecord) -> bool:
        """Returns True at the end-of-stream marker."""
        if payload == "[DONE]":
            record.end = now                   # the stream is complete when its last event arrives
            return True
        try:
            event = json.loads(payload)
        except ValueError:
            record.fail("bad_event", payload[:200])
            return False
        if not isinstance(event, dict):
            record.fail("bad_event", payload[:200])
            return False
        if "error" in event:
            error = event["error"]
            record.fail("stream_error", error if isinstance(error, str) else json.dumps(error))
            return False
        choices, usage = event.get("choices") or (), event.get("usage")
        if not isinstance(choices, (list, tuple)) or not all(isinstance(c, dict) for c in choices) \
                or not isinstance(usage, (dict, type(None))):
            record.fail("bad_event", payload[:200])
            return False
        for choice in choices:
            delta = choice.get("delta") if self.chat else None
            text = (delta.get("content") if isinstance(delta, dict) else None) if self.chat else choice.get("text")
            if text and isinstance(text, str):
                record.chunk_times.append(now)
                record.text_parts.append(text)
            reason = choice.get("finish_reason")
            if reason and isinstance(reason, str):
                record.finish_reason = reason
        if usage:
            prompt, output = usage.get("prompt_tokens"), usage.get("completion_tokens")
            record.server_prompt_tokens = prompt if _is_count(prompt) else None
            record.server_output_tokens = output if _is_count(output) else None
        return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
