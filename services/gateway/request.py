"""The shapes that cross the gateway's layers: a validated, tokenized request (both APIs build one)
and the deltas streamed back for it (both APIs render them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.engine.outputs import TokenLogprob
from services.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    tenant: str = field(repr=False)   # the API key ("" without authentication): never printed
    arrival: float                # time.monotonic()
    deadline: float               # time.monotonic() after which the request is abandoned
    # The only workers it may run on (the gateway's warm path sends one request down each
    # prefill -> decode pair); empty: routing picks among all of them.
    pinned_to: frozenset[str] = frozenset()

    @property
    def num_tokens(self) -> int:
        """The most KV the request can grow to: prompt + max_tokens."""
        return len(self.prompt_token_ids) + self.params.max_tokens


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationDelta:
    """New tokens and text since the previous delta; the last one has finish_reason and usage."""

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: str | None = None     # "stop" | "length" | "abort"
    usage: Usage | None = None
