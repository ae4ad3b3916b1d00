"""Timing and the result rows shared by the GPU kernel benchmarks: device time of captured,
replayed calls, and rows that carry the rate, the ceiling and the baseline of the same run."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import triton
import triton.testing

ROWS: list[dict] = []


def time_ms(*fns: Callable[[], object], replays: int = 20) -> float:
    """Mean device time of one call, the calls `fns` (the same op on rotating inputs, so that
    repeated runs do not read from L2) captured once in a CUDA graph and replayed: no Python
    launch overhead or launch gaps, as in the engine's captured decode step. The median of 5
    trials. An op that cannot be captured (it syncs with the host) is timed by do_bench."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for fn in fns:
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for fn in fns:
                fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return triton.testing.do_bench(fns[0], warmup=20, rep=100, return_mode="median")
    graph.replay()
    trials = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        trials.append(start.elapsed_time(end) / (replays * len(fns)))
    return sorted(trials)[2]


def record(op: str, shape: str, ms: float, amount: float, unit: str, ceiling: float,
           baseline: str = "", baseline_ms: float | None = None, config: str = "") -> None:
    rate = amount / (ms * 1e-3)
    ROWS.append(dict(op=op, shape=shape, ms=ms, rate=rate, unit=unit, of_ceiling=rate / ceiling,
                     baseline=baseline, baseline_ms=baseline_ms,
                     speedup=(baseline_ms / ms) if baseline_ms else None, config=config))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def sweep(name: str, candidates, run: Callable, reference: torch.Tensor) -> tuple[object, float]:
    """Times each candidate config; returns the fastest whose output matches the reference."""
    best, best_ms = None, math.inf
    for config in candidates:
        try:
            err = rel_err(run(config), reference)
            ms = time_ms(lambda: run(config)) if err < 2e-2 else math.inf
        except Exception as exc:  # a config the compiler rejects (e.g. out of shared memory)
            print(f"  sweep {name}: {config} failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        print(f"  sweep {name}: {config} err={err:.2e} {ms * 1e3:.1f} us")
        if ms < best_ms:
            best, best_ms = config, ms
    return best, best_ms
