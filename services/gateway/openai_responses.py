"""OpenAI-compatible response bodies and server-sent-event chunks, built from the gateway's
GenerationDeltas. One `ResponseWriter` per request keeps the id, creation time and model fixed
across its chunks."""

from __future__ import annotations

import json
import time
from typing import Sequence

from services.engine.outputs import TokenLogprob
from services.engine.tokenizer import Tokenizer
from services.gateway.request import GenerationDelta, Usage

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict) -> bytes:
    """One SSE event: `data: {json}` and a blank line."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def usage_json(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens}}


class ResponseWriter:
    def __init__(self, chat: bool, model: str, request_id: str, tokenizer: Tokenizer) -> None:
        self._chat = chat
        self._model = model
        self._id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self._created = int(time.time())
        self._tokenizer = tokenizer
        self._text_offset = 0
        self._sent_role = False

    # --- non-streaming ------------------------------------------------------------------------------
    def full_response(self, deltas: Sequence[GenerationDelta], want_logprobs: bool) -> dict:
        text = "".join(d.text for d in deltas)
        last = deltas[-1]
        logprobs = [lp for d in deltas for lp in (d.logprobs or ())] if want_logprobs else None
        if self._chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": self._chat_logprobs(logprobs), "finish_reason": last.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": self._completion_logprobs(logprobs),
                      "finish_reason": last.finish_reason}
        return {"id": self._id, "object": "chat.completion" if self._chat else "text_completion",
                "created": self._created, "model": self._model, "choices": [choice],
                "usage": usage_json(last.usage) if last.usage else None}

    # --- streaming ----------------------------------------------------------------------------------
    def chunk(self, delta: GenerationDelta, want_logprobs: bool, include_usage: bool) -> bytes:
        logprobs = list(delta.logprobs or ()) if want_logprobs else None
        if self._chat:
            message: dict = {}
            if not self._sent_role:
                message["role"] = "assistant"
                self._sent_role = True
            if delta.text or not message:
                message["content"] = delta.text
            choice = {"index": 0, "delta": message, "logprobs": self._chat_logprobs(logprobs),
                      "finish_reason": delta.finish_reason}
        else:
            choice = {"index": 0, "text": delta.text, "logprobs": self._completion_logprobs(logprobs),
                      "finish_reason": delta.finish_reason}
        payload = self._envelope([choice])
        if include_usage:
            payload["usage"] = None
        return sse_event(payload)

    def usage_chunk(self, usage: Usage) -> bytes:
        payload = self._envelope([])
        payload["usage"] = usage_json(usage)
        return sse_event(payload)

    def _envelope(self, choices: list) -> dict:
        return {"id": self._id, "object": "chat.completion.chunk" if self._chat else "text_completion",
                "created": self._created, "model": self._model, "choices": choices}

    # --- logprobs -----------------------------------------------------------------------------------
    def _token_text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def _chat_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        content = []
        for lp in logprobs:
            token = self._token_text(lp.token_id)
            content.append({"token": token, "logprob": lp.logprob, "bytes": list(token.encode()),
                            "top_logprobs": [{"token": self._token_text(t), "logprob": v,
                                              "bytes": list(self._token_text(t).encode())}
                                             for t, v in lp.top]})
        return {"content": content}

    def _completion_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict | None:
        if logprobs is None:
            return None
        tokens, offsets = [], []
        for lp in logprobs:
            token = self._token_text(lp.token_id)
            tokens.append(token)
            offsets.append(self._text_offset)
            self._text_offset += len(token)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
                "top_logprobs": [{self._token_text(t): v for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}
