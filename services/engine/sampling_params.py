"""How one request samples and when it stops. Validated on construction, so a bad value fails at
the edge with a typed error naming the field and the limit, never inside a running batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.engine.errors import InvalidRequestError

MAX_LOGPROBS = 20   # top-n logprobs per token; more is a denial-of-service lever, not a feature
MAX_STOP_STRINGS = 16   # each is matched against every new piece of text


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0        # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0                  # 0 or -1 -> disabled
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None     # top-n logprobs per generated token

    def __post_init__(self) -> None:
        # Callers often pass lists (JSON); keep the dataclass hashable and immutable.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError("temperature", f"must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise InvalidRequestError("top_k", f"must be -1, 0 (disabled) or >= 1, got {self.top_k}")
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequestError("seed", f"must be in [0, 2**63), got {self.seed}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop", "stop strings must not be empty")
        if any(t < 0 for t in self.stop_token_ids):
            raise InvalidRequestError("stop_token_ids", "token ids must be >= 0")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise InvalidRequestError("logprobs", f"must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def top_k_enabled(self) -> bool:
        return self.top_k > 0
