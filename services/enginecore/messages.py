"""What crosses the pipe between a worker's front end and its engine process, as msgpack.

Commands (front end -> engine): [kind, call_id, ...]:
    ["add", id, request_id, prompt_ids, params, prefill_only, generated_ids, room_tokens]
    ["add_prefilled", id, request_id, prompt_ids, generated_ids, params]
    ["abort", id, request_id]
    ["call", id, method, args]              an engine method of CALLABLE, between two steps
    ["stop", 0]
Events (engine -> front end):
    ["ready", info]                         after the engine is built (info: EngineInfo fields)
    ["result", id, value, stats] / ["error", id, kind, text, field, stats]
    ["step", seconds, stats, outputs]       ONE per engine step: every request's new tokens
(stats: running, waiting, free KV blocks, prompt tokens computed, cached block hashes or None:
what a worker's Load reads)
    ["step_failed", text]                   the step raised; what was running was aborted

Outputs travel as flat lists (no per-output dict keys): the hot path of a 256-stream batch."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from services.engine.errors import (CapacityError, ConfigError, InvalidRequestError,
                                    KVTransferError, ModelNotFoundError, RequestCancelledError,
                                    ReservationError, TandemError, UnsupportedModelError)
from services.engine.outputs import RequestOutput, RequestTimings, TokenLogprob
from services.engine.sampling_params import SamplingParams

# The engine methods a front end may run remotely (`loop.call(engine.<name>, ...)`).
CALLABLE = frozenset({"warm_up", "held_pages", "release", "reserve", "cancel_reservation",
                      "check_integrity", "abort", "has_unfinished_requests"})

_ERRORS: dict[str, type[BaseException]] = {cls.__name__: cls for cls in (
    TandemError, ConfigError, ModelNotFoundError, UnsupportedModelError, KVTransferError,
    ReservationError, RequestCancelledError, AssertionError)}


def pack(message: list) -> bytes:
    return msgpack.packb(message, default=_plain, use_bin_type=True)


def unpack(data: bytes) -> list:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, bytes):
        return value
    raise TypeError(f"cannot send {type(value).__name__} to the engine's front end")


def params_to_wire(params: SamplingParams) -> list:
    return [params.temperature, params.top_p, params.top_k, params.seed, params.max_tokens,
            list(params.stop), list(params.stop_token_ids), params.ignore_eos, params.logprobs]


def params_from_wire(fields: list) -> SamplingParams:
    return SamplingParams(*fields)


def output_to_wire(o: RequestOutput) -> list:
    t = o.timings
    logprobs = (None if o.logprobs is None else
                [[lp.token_id, lp.logprob, [list(pair) for pair in lp.top]] for lp in o.logprobs])
    return [o.request_id, list(o.new_token_ids), o.text_delta, logprobs, o.finished,
            o.finish_reason, o.num_prompt_tokens, o.num_cached_tokens,
            t.arrival, t.first_scheduled, t.first_token, t.finished]


def output_from_wire(f: list) -> RequestOutput:
    logprobs = (None if f[3] is None else
                tuple(TokenLogprob(tid, lp, tuple((a, b) for a, b in top)) for tid, lp, top in f[3]))
    return RequestOutput(f[0], tuple(f[1]), f[2], logprobs, f[4], f[5], f[6], f[7],
                         RequestTimings(f[8], f[9], f[10], f[11]))


def error_to_wire(call_id: int, exc: BaseException) -> list:
    field = getattr(exc, "field", None)
    text = str(exc)
    if isinstance(exc, InvalidRequestError) and text.startswith(f"{field}: "):
        text = text[len(field) + 2:]
    kind = type(exc).__name__
    if isinstance(exc, CapacityError):
        return ["error", call_id, "CapacityError", text, exc.retry_after_s]
    return ["error", call_id, kind, text, field]


def error_from_wire(kind: str, text: str, field: Any) -> BaseException:
    """The engine's typed error, rebuilt so the worker's edge maps it as it would in-process."""
    if kind == "InvalidRequestError":
        return InvalidRequestError(field, text)
    if kind == "CapacityError":
        return CapacityError(text, field)
    cls = _ERRORS.get(kind)
    if cls is not None:
        return cls(text)
    return TandemError(f"{kind} in the engine process: {text}")
