"""The one-row GEMV (kernels/gemv.py) against cuBLAS bf16 at the projections of a Llama-3.1-8B
layer and its LM head, in one run; part of `python -m benchmarks.kernels --only gemv
[--sweep gemv]`.

Per shape: cuBLAS's time (F.linear on one row, what the engine runs otherwise), then with
--sweep gemv every candidate launch below, each checked against cuBLAS's output; the fastest
is recorded beside cuBLAS with its rate as a fraction of the same run's copy rate, and printed
as an entry for GEMV_LAUNCHES when it beats cuBLAS. Weights rotate over four copies (> L2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import kernels
from benchmarks.measure import record, rel_err, time_ms
from kernels.gemv import GemvLaunch, gemv_launch

BF16 = torch.bfloat16
HIDDEN, INTERMEDIATE, VOCAB = 4096, 14336, 128256
GEMV_SHAPES = {"qkv": (6144, HIDDEN), "o": (HIDDEN, HIDDEN),
               "gate_up": (2 * INTERMEDIATE, HIDDEN), "down": (HIDDEN, INTERMEDIATE),
               "lm_head": (VOCAB, HIDDEN)}
TILES = ((8, 512, 4), (16, 256, 4), (16, 512, 4), (16, 512, 8), (32, 256, 4), (32, 256, 8),
         (32, 512, 8), (64, 128, 4), (64, 256, 8), (8, 1024, 4), (4, 1024, 4), (8, 256, 2),
         (4, 512, 2))
SPLITS = (1, 2, 4, 8)


def candidates(n: int, k: int) -> list[GemvLaunch]:
    out = []
    for block_n, block_k, warps in TILES:
        for split in SPLITS:
            if k % (block_k * split) == 0 and n % block_n == 0:
                out.append(GemvLaunch(block_n, block_k, split, warps))
    return out


def bench_gemv(bandwidth: float, do_sweep: bool) -> None:
    for name, (n, k) in GEMV_SHAPES.items():
        copies = 2 if name == "lm_head" else 4
        weights = [torch.randn(n, k, dtype=BF16, device="cuda") * 0.02 for _ in range(copies)]
        x = torch.randn(1, k, dtype=BF16, device="cuda")
        reference = F.linear(x, weights[0])
        base = time_ms(*[lambda w=w: F.linear(x, w) for w in weights])
        moved = 2 * (n * k + k + n)

        def run(launch: GemvLaunch) -> float:
            return time_ms(*[lambda w=w: kernels.gemv(x, w, launch=launch) for w in weights])
        best, best_ms = gemv_launch(n, k), math.inf
        if best is not None:
            best_ms = run(best)
        for launch in candidates(n, k) if do_sweep else ():
            try:
                err = rel_err(kernels.gemv(x, weights[0], launch=launch), reference)
                ms = run(launch) if err < 1e-2 else math.inf
            except Exception as exc:     # a config the compiler rejects
                print(f"  sweep gemv {name}: {launch} failed: {type(exc).__name__}: "
                      f"{str(exc)[:80]}")
                continue
            print(f"  sweep gemv {name} {n}x{k}: {launch} err={err:.1e} {ms * 1e3:.1f} us "
                  f"({moved / (ms * 1e-3) / bandwidth:.0%} of copy; cuBLAS {base * 1e3:.1f} us)")
            if ms < best_ms:
                best, best_ms = launch, ms
        if best is None:
            continue
        record("GEMV, one row", f"N{n} K{k} ({name})", best_ms, moved, "B/s", bandwidth,
               "cuBLAS bf16", base, str(best))
        if best_ms < base:
            print(f"  GEMV_LAUNCHES entry: ({n}, {k}): {best!r},  # {best_ms * 1e3:.1f} us, "
                  f"cuBLAS {base * 1e3:.1f} us")
        del weights
