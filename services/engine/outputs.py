"""What the engine streams back for each request after a step. Plain frozen records: a worker turns
them into proto messages, the CLI prints them."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RequestTimings:
    """Wall-clock seconds (time.time()), so that processes on one host can compare them."""

    arrival: float
    first_scheduled: float | None
    first_token: float | None
    finished: float | None


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]      # (token id, logprob), most likely first


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    new_token_ids: tuple[int, ...]          # tokens produced since the last output of this request
    text_delta: str                         # detokenized incrementally (stop strings trimmed)
    logprobs: tuple[TokenLogprob, ...] | None
    finished: bool
    finish_reason: str | None               # "stop" | "length" | "abort" | "prefilled"
    num_prompt_tokens: int
    num_cached_tokens: int                  # prompt tokens served from the prefix cache
    timings: RequestTimings


def merged(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One output carrying both (same request, `later` after `first`): what a stream that fell
    behind its engine sends as one message instead of two."""
    logprobs = (None if first.logprobs is None and later.logprobs is None
                else (first.logprobs or ()) + (later.logprobs or ()))
    return replace(later, new_token_ids=first.new_token_ids + later.new_token_ids,
                   text_delta=first.text_delta + later.text_delta, logprobs=logprobs)
