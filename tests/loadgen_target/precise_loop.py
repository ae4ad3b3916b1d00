"""An asyncio event loop whose timers fire within tens of microseconds instead of up to a whole
millisecond late. epoll_wait() takes its timeout in whole milliseconds (asyncio rounds up), so
a plain loop delivers every injected delay 0-1 ms late on average ~0.5 ms: too coarse for a target
that must be accurate to well under a millisecond. This selector waits the whole milliseconds in
epoll, then sleeps the remainder with nanosleep and polls once more."""

from __future__ import annotations

import asyncio
import ctypes
import math
import selectors
import time


PR_SET_TIMERSLACK = 29


class PreciseEpollSelector(selectors.EpollSelector):
    def select(self, timeout: float | None = None):
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        deadline = time.perf_counter() + timeout
        whole_ms = math.floor(timeout * 1e3)
        if whole_ms > 0:
            ready = super().select(whole_ms * 1e-3 - 1e-7)   # the parent rounds up to whole ms
            if ready:
                return ready
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return super().select(0)


def tighten_timer_slack() -> None:
    """Linux lets a sleeping thread wake up to 50 us late (timer slack) to batch wake-ups; the
    target's delays are its output, so it asks for 1 ns. No-op where prctl is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def new_precise_loop() -> asyncio.AbstractEventLoop:
    tighten_timer_slack()
    return asyncio.SelectorEventLoop(PreciseEpollSelector())


def run_precise(coro):
    with asyncio.Runner(loop_factory=new_precise_loop) as runner:
        return runner.run(coro)
