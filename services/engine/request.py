"""A request's state inside the engine: its tokens, how many of them have K/V in the pool, and
where it is in its lifecycle."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from services.engine.sampling_params import SamplingParams


# An output token sampled by a batch still running on the device (see scheduler.advance).
PENDING_TOKEN = -1


class RequestStatus(enum.IntEnum):
    """Ordered: everything above PREEMPTED is finished."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_PREFILLED = 6      # stopped after its first token; its blocks are held for transfer

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_PREFILLED: "prefilled",
}


class Request:
    def __init__(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams,
                 arrival: float, *, prefill_only: bool = False,
                 output_token_ids: Sequence[int] = ()) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids = list(output_token_ids)
        self.params = params
        self.prefill_only = prefill_only
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0     # tokens whose K/V is in the pool
        self.num_cached_tokens = 0       # prompt tokens served from the prefix cache at admission
        self.arrival = arrival
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.finished: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model before the next one can be sampled: the prompt
        (or what a preemption discarded), or the last sampled token while decoding."""
        return self.num_tokens - self.num_computed_tokens

    def token_ids(self, start: int, end: int) -> list[int]:
        """all_token_ids[start:end] without copying the whole sequence (called every step)."""
        num_prompt = len(self.prompt_token_ids)
        return (self.prompt_token_ids[start:min(end, num_prompt)]
                + self.output_token_ids[max(start - num_prompt, 0):max(end - num_prompt, 0)])

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.name}, prompt={self.num_prompt_tokens}, "
                f"out={len(self.output_token_ids)}, computed={self.num_computed_tokens})")
