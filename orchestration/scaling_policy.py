"""When to add or remove a prefill or a decode worker: a pure function of the gateway's signals
over time, so it is tested on simulated traces.

Each role has its own pressure: prefill is short when prompts wait for prefill (the estimated
queue time) or TTFT misses its SLO while prompts are queued; decode is short when its KV pool is
nearly full, its running requests reach what a worker batches, requests queue at admission for
decode blocks, or TPOT misses its SLO. A role is idle when its pressure is well below the
scale-up thresholds (hysteresis: the down thresholds sit far below the up ones).

It does not flap: a condition must hold for `sustain_ticks` consecutive ticks before it acts,
after a change the role waits `up_cooldown_s` before the next one, and `down_cooldown_s` (longer)
before removing, counted from any change of that role. One decision per role per tick. Below
min or above max (a worker died, limits changed) it corrects at once.

A role is judged idle on its peak load over the last `down_window_s`, not on one sample: a load
that dips between requests (two streams whose requests end and start again) keeps its workers.
Loads are kept in workers' worth (utilization x workers then), so a change of fleet inside the
window is accounted for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.engine.errors import ConfigError

ROLES = ("prefill", "decode")
UP, DOWN = "up", "down"


@dataclass(frozen=True)
class RoleLimits:
    min_workers: int
    max_workers: int

    def __post_init__(self) -> None:
        if self.min_workers < 1:       # the gateway needs one of each role it routes to
            raise ConfigError(f"min workers must be >= 1, got {self.min_workers}")
        if self.max_workers < self.min_workers:
            raise ConfigError(f"max workers must be >= min workers ({self.min_workers}), "
                              f"got {self.max_workers}")


@dataclass(frozen=True)
class ScalingPolicyConfig:
    prefill: RoleLimits | None = field(default_factory=lambda: RoleLimits(1, 1))  # None: colocated
    decode: RoleLimits = field(default_factory=lambda: RoleLimits(1, 1))
    prefill_wait_up_s: float = 0.5        # estimated prefill queue time that adds a prefill worker
    prefill_wait_down_s: float = 0.05     # ... below which prefill counts as idle
    kv_utilization_up: float = 0.85       # decode KV blocks used or reserved, over all decode workers
    kv_utilization_down: float = 0.3
    running_per_worker_up: float = 0.9    # running requests / what the decode workers batch
    running_per_worker_down: float = 0.3
    slo_attainment_target: float = 0.9    # share of requests within the TTFT / TPOT SLO
    sustain_ticks: int = 3                # a condition must hold this many ticks in a row
    up_cooldown_s: float = 10.0
    down_cooldown_s: float = 30.0
    down_window_s: float = 10.0           # idle means idle at every tick of this window

    def __post_init__(self) -> None:
        if not 0 <= self.prefill_wait_down_s < self.prefill_wait_up_s:
            raise ConfigError("prefill_wait_down_s must be in [0, prefill_wait_up_s), got "
                              f"{self.prefill_wait_down_s} and {self.prefill_wait_up_s}")
        for down, up in (("kv_utilization_down", "kv_utilization_up"),
                         ("running_per_worker_down", "running_per_worker_up")):
            if not 0 <= getattr(self, down) < getattr(self, up) <= 1:
                raise ConfigError(f"need 0 <= {down} < {up} <= 1, got {getattr(self, down)} "
                                  f"and {getattr(self, up)}")
        if not 0 < self.slo_attainment_target <= 1:
            raise ConfigError(f"slo_attainment_target must be in (0, 1], got {self.slo_attainment_target}")
        if self.sustain_ticks < 1:
            raise ConfigError(f"sustain_ticks must be >= 1, got {self.sustain_ticks}")
        if self.up_cooldown_s < 0 or self.down_cooldown_s < 0:
            raise ConfigError("cool-downs must be >= 0")
        if self.down_window_s < 0:
            raise ConfigError(f"down_window_s must be >= 0, got {self.down_window_s}")

    def limits(self, role: str) -> RoleLimits | None:
        return self.prefill if role == "prefill" else self.decode

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role in ROLES if self.limits(role) is not None)


@dataclass(frozen=True)
class ScalingSignals:
    """What the gateway knows at `now` (monotonic seconds). Worker counts exclude draining ones.
    None: not known (no rate measured yet, no request finished in the window)."""

    now: float
    prefill_workers: int
    decode_workers: int
    prefill_wait_s: float | None = None
    prefill_queued_tokens: int = 0
    kv_utilization: float = 0.0           # decode blocks used or reserved / all decode blocks
    running_fraction: float = 0.0         # decode running requests / their batch capacity
    queued_requests: int = 0              # waiting at admission for capacity
    ttft_attainment: float | None = None  # share within the TTFT SLO over the window
    tpot_attainment: float | None = None

    def workers(self, role: str) -> int:
        return self.prefill_workers if role == "prefill" else self.decode_workers


@dataclass(frozen=True)
class ScalingDecision:
    role: str
    direction: str              # "up" | "down"
    reason: str                 # a label value: prefill_queue, ttft_slo, decode_kv, ...
    detail: str                 # what was seen, for the log


class ScalingPolicy:
    def __init__(self, config: ScalingPolicyConfig) -> None:
        self.config = config
        self._last_change: dict[str, float] = {}
        self._streak: dict[tuple[str, str], int] = {}
        self._recent: deque[_Load] = deque()

    def decide(self, s: ScalingSignals) -> list[ScalingDecision]:
        self._remember(s)
        decisions = []
        for role in self.config.roles:
            decision = self._decide_role(role, s)
            if decision is not None:
                self._last_change[role] = s.now
                self._reset(role)
                decisions.append(decision)
        return decisions

    def _decide_role(self, role: str, s: ScalingSignals) -> ScalingDecision | None:
        limits, n = self.config.limits(role), s.workers(role)
        if n < limits.min_workers:
            return ScalingDecision(role, UP, "below_min", f"{n} < min {limits.min_workers}")
        if n > limits.max_workers:
            return ScalingDecision(role, DOWN, "above_max", f"{n} > max {limits.max_workers}")
        up = self._pressure(role, s)
        down = None if up else self._idle(role, s)
        up_streak = self._count(role, UP, up is not None)
        down_streak = self._count(role, DOWN, down is not None)
        since = s.now - self._last_change.get(role, -float("inf"))
        if up and up_streak >= self.config.sustain_ticks and n < limits.max_workers \
                and since >= self.config.up_cooldown_s:
            return ScalingDecision(role, UP, *up)
        if down and down_streak >= self.config.sustain_ticks and n > limits.min_workers \
                and since >= self.config.down_cooldown_s:
            return ScalingDecision(role, DOWN, *down)
        return None

    def _count(self, role: str, direction: str, holds: bool) -> int:
        key = (role, direction)
        self._streak[key] = self._streak.get(key, 0) + 1 if holds else 0
        return self._streak[key]

    def _reset(self, role: str) -> None:
        for direction in (UP, DOWN):
            self._streak[(role, direction)] = 0

    def _pressure(self, role: str, s: ScalingSignals) -> tuple[str, str] | None:
        c = self.config
        if role == "prefill":
            if s.prefill_wait_s is not None and s.prefill_wait_s >= c.prefill_wait_up_s:
                return "prefill_queue", f"prefill wait {s.prefill_wait_s:.2f}s >= {c.prefill_wait_up_s}s"
            if _missed(s.ttft_attainment, c) and s.prefill_queued_tokens:
                return "ttft_slo", (f"TTFT SLO met by {s.ttft_attainment:.0%} < "
                                    f"{c.slo_attainment_target:.0%} with prompts queued")
            return None
        if s.kv_utilization >= c.kv_utilization_up:
            return "decode_kv", f"decode KV {s.kv_utilization:.0%} >= {c.kv_utilization_up:.0%}"
        if s.running_fraction >= c.running_per_worker_up:
            return "decode_running", f"decode batch {s.running_fraction:.0%} full"
        if s.queued_requests and not s.prefill_queued_tokens:
            return "admission_queue", f"{s.queued_requests} requests wait for decode capacity"
        if _missed(s.tpot_attainment, c):
            return "tpot_slo", f"TPOT SLO met by {s.tpot_attainment:.0%} < {c.slo_attainment_target:.0%}"
        return None

    def _remember(self, s: ScalingSignals) -> None:
        self._recent.append(_Load(s.now, s.queued_requests, s.prefill_wait_s or 0.0,
                                  s.kv_utilization * s.decode_workers,
                                  s.running_fraction * s.decode_workers))
        while self._recent[0].now < s.now - self.config.down_window_s:
            self._recent.popleft()

    def _idle(self, role: str, s: ScalingSignals) -> tuple[str, str] | None:
        c, recent = self.config, self._recent
        if any(load.queued_requests for load in recent):
            return None
        if role == "prefill":
            wait = max(load.prefill_wait_s for load in recent)
            if wait <= c.prefill_wait_down_s and not _missed(s.ttft_attainment, c):
                return "idle", f"prefill wait {wait:.2f}s <= {c.prefill_wait_down_s}s"
            return None
        # The window's peak, per worker now and per worker were one removed (n - 1 of them).
        n = s.decode_workers
        kv = max(load.kv_workers for load in recent) / n
        running = max(load.running_workers for load in recent) / n
        share = n / (n - 1) if n > 1 else float("inf")
        if (kv <= c.kv_utilization_down and running <= c.running_per_worker_down
                and kv * share < c.kv_utilization_up and running * share < c.running_per_worker_up
                and not _missed(s.tpot_attainment, c)):
            return "idle", (f"decode KV {kv:.0%}, batch {running:.0%} at most over "
                            f"{c.down_window_s:g}s <= {c.kv_utilization_down:.0%} / "
                            f"{c.running_per_worker_down:.0%}")
        return None


@dataclass(frozen=True)
class _Load:
    """One tick's load, decode figures in workers' worth (utilization x decode workers)."""

    now: float
    queued_requests: int
    prefill_wait_s: float
    kv_workers: float
    running_workers: float


def _missed(attainment: float | None, config: ScalingPolicyConfig) -> bool:
    return attainment is not None and attainment < config.slo_attainment_target
