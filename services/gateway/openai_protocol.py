"""OpenAI-compatible request bodies (/v1/completions, /v1/chat/completions) parsed into the
gateway's terms. Every wrong value raises InvalidRequestError naming the JSON field and what it
accepts; unsupported features are refused by name rather than silently ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.engine.errors import InvalidRequestError
from services.engine.sampling_params import MAX_STOP_STRINGS, SamplingParams
# The widths of the wire fields these values travel in (proto SamplingParams).
_INT32_MAX = 2**31 - 1
_INT_LIMITS = {"max_tokens": 2**32 - 1, "max_completion_tokens": 2**32 - 1, "seed": 2**64 - 1}
_UNSUPPORTED_IF_SET = ("tools", "functions", "tool_choice", "response_format", "suffix", "logit_bias")


@dataclass(frozen=True)
class OpenAIRequest:
    chat: bool
    model: str | None
    prompt_text: str | None                # completions: text prompt
    prompt_token_ids: tuple[int, ...] | None   # completions: token-id prompt
    messages: tuple[dict, ...] | None      # chat
    sampling: dict                         # SamplingParams kwargs except max_tokens when absent
    max_tokens: int | None                 # None: the API's default
    stream: bool
    include_usage: bool
    logprobs: int | None                   # top-n per token (0: only the sampled token's)
    user: str | None

    def params(self, default_max_tokens: int) -> SamplingParams:
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return SamplingParams(max_tokens=max_tokens, logprobs=self.logprobs, **self.sampling)


def parse_request(body: Any, chat: bool) -> OpenAIRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    _check_unicode(body, "")
    for name in _UNSUPPORTED_IF_SET:
        if body.get(name) not in (None, [], {}, ""):
            raise InvalidRequestError(name, "is not supported by this server")
    n = _int(body, "n", 1)
    if n != 1:
        raise InvalidRequestError("n", f"only n=1 is supported, got {n}")
    if _int(body, "best_of", 1) != 1:
        raise InvalidRequestError("best_of", "only best_of=1 is supported")
    if _bool(body, "echo", False):
        raise InvalidRequestError("echo", "echo=true is not supported")
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, 0.0) != 0.0:
            raise InvalidRequestError(name, "penalties are not supported; send 0 or omit it")
    model = _str(body, "model", None)
    prompt_text = prompt_ids = messages = None
    if chat:
        messages = _messages(body)
        max_tokens = _int(body, "max_completion_tokens", None)
        if max_tokens is None:
            max_tokens = _int(body, "max_tokens", None)
        logprobs = _chat_logprobs(body)
    else:
        prompt_text, prompt_ids = _prompt(body)
        max_tokens = _int(body, "max_tokens", None)
        logprobs = _int(body, "logprobs", None)
    sampling: dict = {}
    for name in ("temperature", "top_p"):
        value = _number(body, name, None)
        if value is not None:
            sampling[name] = value
    for name in ("top_k", "seed"):
        value = _int(body, name, None)
        if value is not None:
            sampling[name] = value
    sampling["stop"] = _stop(body)
    sampling["ignore_eos"] = _bool(body, "ignore_eos", False)
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequestError("stream_options", "must be an object")
    include_usage = _bool(options or {}, "include_usage", False, "stream_options.include_usage")
    if include_usage and not stream:
        raise InvalidRequestError("stream_options", "only allowed when stream is true")
    return OpenAIRequest(chat, model, prompt_text, prompt_ids, messages, sampling, max_tokens, stream,
                         include_usage, logprobs, _str(body, "user", None))


def _check_unicode(value: Any, path: str) -> None:
    """JSON may spell lone UTF-16 surrogates (\\ud800), which no tokenizer or proto string takes:
    refuse them here, naming where they are."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(path or "body", "is not valid Unicode (lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, path or "body")
            _check_unicode(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{path}[{i}]")


def _prompt(body: dict) -> tuple[str | None, tuple[int, ...] | None]:
    prompt = body.get("prompt")
    # A batch of one is accepted in both of its spellings; larger batches are n>1 in disguise.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt", "must not be empty")
        return prompt, None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                   for t in prompt):
        return None, tuple(prompt)
    if isinstance(prompt, list) and not prompt:
        raise InvalidRequestError("prompt", "must not be empty")
    raise InvalidRequestError("prompt", "must be a string, a list of token ids, or a list of one of those")


def _messages(body: dict) -> tuple[dict, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"messages[{i}].role", "must be a string")
        content = m.get("content")
        if isinstance(content, list):   # content parts: only text is served
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise InvalidRequestError(f"messages[{i}].content[{j}]", "only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content", "must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    return tuple(out)


def _chat_logprobs(body: dict) -> int | None:
    top = _int(body, "top_logprobs", None)
    if not _bool(body, "logprobs", False):
        if top is not None:
            raise InvalidRequestError("top_logprobs", "requires logprobs=true")
        return None
    return top if top is not None else 0


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequestError("stop", "must be a non-empty string or a list of non-empty strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    return tuple(stop)


def _int(body: dict, name: str, default, label: str | None = None):
    value = body.get(name, default)
    if value is None or value is default:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(label or name, f"must be an integer, got {type(value).__name__}")
    limit = _INT_LIMITS.get(name, _INT32_MAX)
    if not -limit <= value <= limit:
        raise InvalidRequestError(label or name, f"must be at most {limit} in magnitude, got {value}")
    return value


def _number(body: dict, name: str, default):
    value = body.get(name, default)
    if value is None or value is default:
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidRequestError(name, f"must be a number, got {type(value).__name__}")
    return float(value)


def _bool(body: dict, name: str, default: bool, label: str | None = None) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(label or name, f"must be true or false, got {type(value).__name__}")
    return value


def _str(body: dict, name: str, default):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequestError(name, f"must be a string, got {type(value).__name__}")
    return value
