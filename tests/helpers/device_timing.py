"""Device time of one GPU operation, without the host's launch latency in it.

Events recorded around a single call on an idle GPU measure from the start event to the end
event as the GPU sees them: when the host takes longer to launch the operation (a Triton launch
from Python is tens of microseconds) than the GPU takes to reach it, the idle gap between the
two counts as the operation's time. Here each call is queued behind a short spin of the GPU, so
by the time the GPU reaches the start event the operation is already waiting behind it, as it
is when the engine's work keeps the GPU busy."""

from __future__ import annotations

import statistics
import time

import torch

SPIN_CYCLES = 2_000_000        # ~1 ms at H200 clocks: longer than any host launch path here


def queued_device_ms(fn, repeats: int = 20, warmup: int = 3) -> list[float]:
    """Milliseconds of device time for each of `repeats` calls of fn."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SPIN_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def host_launch_ms(fn, repeats: int = 20) -> float:
    """Median host time to launch fn (the GPU kept busy so the launch never waits on it)."""
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda._sleep(SPIN_CYCLES)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(times)
