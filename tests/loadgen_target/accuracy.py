"""How far a client's measured latencies may stray from the target's injected ones on a machine
that other work shares: the load generator's claim (1 ms on idle cores, a benchmark figure) plus
the machine's wake-up latency as the target measured it in the same run. The target's own mean
lateness (how late it wrote its tokens against their schedule, stalls included) is what waiting
for a core costs a process here; the client's read of a token and the loop serving its other
streams wait for a core the same way, so the allowance counts three of them. On idle cores that
is well under 1 ms on top of the claim, so a client off by a few milliseconds still fails."""

from __future__ import annotations

from dataclasses import dataclass

CLAIM_MS = 1.0
WAKE_UPS = 3


@dataclass(frozen=True)
class AccuracyBounds:
    start_ms: float     # TTFT and E2E (their start is the request's send)
    itl_ms: float       # inter-token latency (differences: no set-up in them)

    @classmethod
    def from_emission(cls, emission: dict, setup_ms: float = 0.0) -> "AccuracyBounds":
        """emission: the target's /stats; setup_ms: call set-up the protocol adds to TTFT."""
        return cls(start_ms=CLAIM_MS + WAKE_UPS * emission["mean_first_token_late_ms"] + setup_ms,
                   itl_ms=CLAIM_MS + WAKE_UPS * emission["mean_token_late_ms"])
