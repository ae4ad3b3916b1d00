"""The one-row GEMV (kernels/gemv.py) against cuBLAS bf16 at the projections of a Llama-3.1-8B
layer and its LM head, and with int8 weights against our W8A16 GEMM, in one run; part of
`python -m benchmarks.kernels --only gemv [--sweep gemv]`.

Per shape: the baseline's time (what the engine runs otherwise at one row), then with
--sweep gemv every candidate launch below, each checked against the bf16 product; the fastest
is recorded beside the baseline with its rate as a fraction of the same run's copy rate, and
printed as an entry for GEMV_LAUNCHES / W8_GEMV_LAUNCHES when it beats the baseline. Weights
rotate over four copies (> L2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import kernels
from benchmarks.measure import record, rel_err, time_ms
from benchmarks.quantized_weights import int8_weight
from kernels.gemm_launch import gemm_launch
from kernels.gemv import GemvLaunch, gemv_launch

BF16 = torch.bfloat16
HIDDEN, INTERMEDIATE, VOCAB = 4096, 14336, 128256
GEMV_SHAPES = {"qkv": (6144, HIDDEN), "o": (HIDDEN, HIDDEN),
               "gate_up": (2 * INTERMEDIATE, HIDDEN), "down": (HIDDEN, INTERMEDIATE),
               "lm_head": (VOCAB, HIDDEN)}
TILES = ((8, 512, 4), (16, 256, 4), (16, 512, 4), (16, 512, 8), (32, 256, 4), (32, 256, 8),
         (32, 512, 8), (64, 128, 4), (64, 256, 8), (8, 1024, 4), (4, 1024, 4), (8, 256, 2),
         (4, 512, 2))
# int8 weights: a 16-byte load holds 16 of them, so longer K steps.
INT8_TILES = ((8, 1024, 4), (16, 512, 4), (16, 1024, 4), (16, 1024, 8), (32, 512, 8),
              (8, 2048, 4), (4, 2048, 4), (32, 1024, 8), (8, 512, 2))
SPLITS = (1, 2, 4, 8)


def candidates(n: int, k: int, tiles=TILES) -> list[GemvLaunch]:
    out = []
    for block_n, block_k, warps in tiles:
        for split in SPLITS:
            if k % (block_k * split) == 0 and n % block_n == 0:
                out.append(GemvLaunch(block_n, block_k, split, warps))
    return out


def bench_gemv(bandwidth: float, do_sweep: bool) -> None:
    for name, (n, k) in GEMV_SHAPES.items():
        copies = 2 if name == "lm_head" else 4
        weights = [torch.randn(n, k, dtype=BF16, device="cuda") * 0.02 for _ in range(copies)]
        x = torch.randn(1, k, dtype=BF16, device="cuda")
        base = time_ms(*[lambda w=w: F.linear(x, w) for w in weights])
        _one(name, n, k, x, [(w, None) for w in weights], F.linear(x, weights[0]), base,
             "cuBLAS bf16", 2 * (n * k + k + n), bandwidth, do_sweep, TILES, int8=False)
        del weights
    for name, (n, k) in GEMV_SHAPES.items():
        if name == "lm_head":
            continue            # the LM head stays in the serving dtype
        weights = [int8_weight(n, k) for _ in range(4)]
        x = torch.randn(1, k, dtype=BF16, device="cuda")
        fns = [lambda w=w, s=s: kernels.w8a16_gemm(x, w, s, launch=gemm_launch("w8a16", 1, n, k))
               for w, s, _ in weights]
        base = time_ms(*fns)
        _one(name, n, k, x, [(w, s) for w, s, _ in weights], x @ weights[0][2].t(), base,
             "our W8A16 GEMM", n * k + 4 * n + 2 * (k + n), bandwidth, do_sweep, INT8_TILES,
             int8=True)
        del weights


def _one(name: str, n: int, k: int, x: torch.Tensor, weights: list, reference: torch.Tensor,
         base: float, baseline: str, moved: int, bandwidth: float, do_sweep: bool, tiles,
         int8: bool) -> None:
    """Sweep one shape's launches (weights rotate over `weights`, (weight, scale) pairs) and
    record the fastest beside the baseline's time `base`."""
    def run(launch: GemvLaunch) -> float:
        return time_ms(*[lambda w=w, s=s: kernels.gemv(x, w, None, s, launch=launch)
                         for w, s in weights])
    w0, s0 = weights[0]
    kind = "int8" if int8 else "bf16"
    best, best_ms = gemv_launch(n, k, x.dtype, int8), math.inf
    if best is not None:
        best_ms = run(best)
    for launch in candidates(n, k, tiles) if do_sweep else ():
        try:
            err = rel_err(kernels.gemv(x, w0, None, s0, launch=launch), reference)
            ms = run(launch) if err < 1e-2 else math.inf
        except Exception as exc:     # a config the compiler rejects
            print(f"  sweep gemv {kind} {name}: {launch} failed: {type(exc).__name__}: "
                  f"{str(exc)[:80]}")
            continue
        print(f"  sweep gemv {kind} {name} {n}x{k}: {launch} err={err:.1e} {ms * 1e3:.1f} us "
              f"({moved / (ms * 1e-3) / bandwidth:.0%} of copy; {baseline} {base * 1e3:.1f} us)")
        if ms < best_ms:
            best, best_ms = launch, ms
    if best is None:
        return
    record(f"GEMV, one row, {kind} weight", f"N{n} K{k} ({name})", best_ms, moved, "B/s",
           bandwidth, baseline, base, str(best))
    if best_ms < base:
        table = "W8_GEMV_LAUNCHES" if int8 else "GEMV_LAUNCHES"
        print(f"  {table} entry: ({n}, {k}): {best!r},  # {best_ms * 1e3:.1f} us, "
              f"{baseline} {base * 1e3:.1f} us")
