"""What the target does with each request: when tokens come (TTFT, inter-token delay, counted
from the moment the request arrives, on an absolute schedule so delays do not drift) and which
requests fail, stall or lose their stream. Faults hit every Nth request (1-based, counted over
both protocols), so a test knows exactly how many to expect."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Fate(enum.Enum):
    OK = "ok"
    ERROR = "error"            # answered with error_status before any token
    STALL = "stall"            # sends stall_after tokens, then nothing until the client leaves
    CLOSE = "close"            # sends close_after tokens, then drops the connection / ends the stream


@dataclass(frozen=True)
class TargetBehaviour:
    ttft_s: float = 0.05
    itl_s: float = 0.01
    output_tokens: int | None = None   # None: as many as the request's max_tokens
    default_max_tokens: int = 16
    error_every: int = 0
    error_status: int = 500
    stall_every: int = 0
    stall_after: int = 1
    close_every: int = 0
    close_after: int = 1
    api_key: str | None = None
    model: str = "loadgen-target"
    max_active: int = 0                # > 0: at most this many streams at once, the rest wait (FIFO)

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.itl_s < 0:
            raise ValueError("ttft_s and itl_s must be >= 0")
        for name in ("error_every", "stall_every", "close_every", "stall_after", "close_after", "max_active"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def fate(self, n: int) -> Fate:
        """Fate of the n-th request (1-based)."""
        for every, fate in ((self.error_every, Fate.ERROR), (self.stall_every, Fate.STALL),
                            (self.close_every, Fate.CLOSE)):
            if every and n % every == 0:
                return fate
        return Fate.OK

    def num_tokens(self, max_tokens: int | None) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return max_tokens or self.default_max_tokens

    def token_time(self, arrival: float, k: int) -> float:
        """When token k (0-based) is due, for a request that arrived at `arrival`."""
        return arrival + self.ttft_s + k * self.itl_s


def prompt_tokens(text: str) -> int:
    """The target's own 'tokenizer': one token per whitespace-separated word."""
    return len(text.split())


class EmissionLog:
    """How late the target wrote each token against its schedule (both protocols): the target's
    own accuracy, so a test can tell the target's lateness from the client's."""

    def __init__(self) -> None:
        self.first_token_late_s: list[float] = []
        self.token_late_s: list[float] = []

    def wrote(self, k: int, scheduled: float, written: float) -> None:
        (self.first_token_late_s if k == 0 else self.token_late_s).append(written - scheduled)

    def summary(self) -> dict:
        def median_ms(values: list[float]) -> float | None:
            return sorted(values)[len(values) // 2] * 1e3 if values else None
        def mean_ms(values: list[float]) -> float | None:
            return sum(values) / len(values) * 1e3 if values else None
        return {"tokens": len(self.first_token_late_s) + len(self.token_late_s),
                "median_first_token_late_ms": median_ms(self.first_token_late_s),
                "median_token_late_ms": median_ms(self.token_late_s),
                "mean_first_token_late_ms": mean_ms(self.first_token_late_s),
                "mean_token_late_ms": mean_ms(self.token_late_s)}
