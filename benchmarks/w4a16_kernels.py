"""W4A16 GEMM at the four projections of a Llama-3.1-8B layer (qkv, o, gate|up, down; group
128, bf16) beside cuBLAS bf16 and our W8A16 on the same shape, in one run; part of
`python -m benchmarks.kernels --only w4a16 [--sweep w4a16] [--w4a16-shapes qkv,o,...]`.

Decode rows (M = 1, 4, 16) run the decode kernels (kernels/w4a16_decode.py) with the launch
kernels/gemm_launch.py picks; with --sweep w4a16 also every candidate launch below. Each
candidate's output is checked against cuBLAS's and its line gives the time, the GB/s moved
(4-bit weights + scales and zeros + activations and output), that rate as a fraction of the
same run's device-to-device copy (the int4 roofline) and the speed-up over cuBLAS bf16 at the
same M. The fastest is recorded beside the rule's launch, and printed as an entry for
kernels/gemm_launch.py's W4_DECODE_LAUNCHES. Prefill rows (M = 64, 256) run the general kernel;
one act-order row per shape (g_idx: general kernel; sorted rows + perm: decode kernel)."""

from __future__ import annotations

import math

import torch

import kernels
from benchmarks.measure import record, rel_err, time_ms
from benchmarks.quantized_weights import int4_weight, int8_weight
from kernels.gemm_launch import W4DecodeLaunch, decode_m_bucket, gemm_launch, w4_decode_launch

BF16 = torch.bfloat16
HIDDEN, INTERMEDIATE, GROUP = 4096, 14336, 128
W4A16_SHAPE_NAMES = {"qkv": (6144, HIDDEN), "o": (HIDDEN, HIDDEN),
                     "gate_up": (2 * INTERMEDIATE, HIDDEN), "down": (HIDDEN, INTERMEDIATE)}
DECODE_ROWS, PREFILL_ROWS = (1, 4, 16), (64, 256)

# (block_n, block_k, num_warps) FMA tiles and (block_n, block_k, num_warps, num_stages) tensor-
# core tiles: each holds >= 4 words per thread per sub-step (no replicated warps) and the
# compiled loops of these had the fewest instructions per weight; K splits on top.
FMA_TILES = ((32, 256, 1), (64, 256, 2), (64, 512, 2), (128, 512, 4), (32, 512, 4))
DOT_TILES = ((64, 256, 2, 3), (128, 256, 2, 3), (128, 256, 4, 3), (256, 256, 8, 3),
             (128, 512, 4, 4), (64, 128, 2, 4))
SPLITS = (1, 2, 4, 8)


def decode_candidates(m: int, n: int, k: int) -> list[W4DecodeLaunch]:
    """The rule's launch first, then FMA tiles (one row only: FMA reads the weights once per
    row) and tensor-core tiles, each at the K splits that leave a slice at least one step."""
    found = [w4_decode_launch(m, n, k)]
    if m == 1:
        found += [W4DecodeLaunch(bn, bk, s, wp, use_dot=False)
                  for bn, bk, wp in FMA_TILES for s in SPLITS if k // (s * bk) >= 1]
    found += [W4DecodeLaunch(bn, bk, s, wp, st, use_dot=True)
              for bn, bk, wp, st in DOT_TILES for s in SPLITS[:3] if k // (s * bk) >= 1]
    return list(dict.fromkeys(found))


def moved_bytes(m: int, n: int, k: int) -> float:
    return n * k / 2 + (k // GROUP) * n * 2.5 + 2 * m * (k + n)


def sweep_decode(m: int, n: int, k: int, weights, dense, bandwidth: float,
                 base_ms: float) -> tuple[W4DecodeLaunch, float]:
    """Times every candidate on the rotated weights; prints one line each; returns the fastest
    whose output matches cuBLAS's."""
    x = torch.randn(m, k, dtype=BF16, device="cuda")
    reference = x @ dense[0].t()
    best, best_ms = None, math.inf
    for launch in decode_candidates(m, n, k):
        run = lambda w, launch=launch: kernels.w4a16_gemm(x, w[0], w[1], w[2], GROUP,
                                                          launch=launch)
        try:
            err = rel_err(run(weights[0]), reference)
            ms = time_ms(*[lambda w=w: run(w) for w in weights]) if err < 2e-2 else math.inf
        except Exception as exc:   # a config the compiler rejects (e.g. out of shared memory)
            print(f"  sweep w4a16 M{m} N{n} K{k}: {launch} failed: {type(exc).__name__}: "
                  f"{str(exc)[:80]}", flush=True)
            continue
        rate = moved_bytes(m, n, k) / (ms * 1e-3)
        print(f"  sweep w4a16 M{m} N{n} K{k}: {launch} err={err:.1e} {ms * 1e3:7.1f} us "
              f"{rate / 1e9:6.0f} GB/s {100 * rate / bandwidth:4.0f}% of roofline "
              f"{base_ms / ms:5.2f}x cuBLAS", flush=True)
        if ms < best_ms:
            best, best_ms = launch, ms
    return best, best_ms


def bench_w4a16(bandwidth: float, do_sweep: bool, shapes: list[str] | None = None) -> None:
    table = []
    for name in shapes or list(W4A16_SHAPE_NAMES):
        n, k = W4A16_SHAPE_NAMES[name]
        copies = max(2, math.ceil(200e6 / (n * k / 2)))       # rotated past the 50 MB L2
        weights = [int4_weight(n, k) for _ in range(copies)]
        dense = [w[4] for w in weights]
        int8 = [int8_weight(n, k)[:2] for _ in range(max(2, math.ceil(200e6 / (n * k))))]
        for m in DECODE_ROWS + PREFILL_ROWS:
            x = torch.randn(m, k, dtype=BF16, device="cuda")
            base = time_ms(*[lambda wb=wb: x @ wb.t() for wb in dense])
            rule = w4_decode_launch(m, n, k) or gemm_launch("w4a16", m, n, k)
            launches = [("", rule)]
            if do_sweep and m in DECODE_ROWS:
                best, _ = sweep_decode(m, n, k, weights, dense, bandwidth, base)
                if best is not None and best != rule:
                    launches = [(" (swept)", best), (" (rule)", rule)]
                    table.append(f"    ({decode_m_bucket(m)}, {n}, {k}): {best!r},")
            times = []
            for label, launch in launches:
                times.append(time_ms(*[lambda w=w: kernels.w4a16_gemm(x, w[0], w[1], w[2],
                                                                      GROUP, launch=launch)
                                       for w in weights]))
                record(f"W4A16 GEMM{label}", f"M{m} N{n} K{k}", times[-1], moved_bytes(m, n, k),
                       "B/s", bandwidth, "cuBLAS bf16", base, repr(launch))
            if m in DECODE_ROWS:
                w8 = time_ms(*[lambda w=w, s=s: kernels.w8a16_gemm(x, w, s) for w, s in int8])
                record(f"W4A16 GEMM{launches[0][0]}", f"M{m} N{n} K{k}", times[0],
                       moved_bytes(m, n, k), "B/s", bandwidth, "W8A16 (ours)", w8,
                       repr(launches[0][1]))
        bench_act_order(n, k, weights, dense, bandwidth)
        del weights, dense, int8
    if table:
        print("W4_DECODE_LAUNCHES entries (kernels/gemm_launch.py) from this sweep:")
        print("\n".join(table))


def bench_act_order(n: int, k: int, weights, dense, bandwidth: float) -> None:
    """Act order two ways at M = 1: groups gathered per element by g_idx (general kernel), and
    the engine's way, rows sorted by group at load with the input channels gathered through a
    permutation (decode kernel)."""
    copies = len(weights)
    act = [int4_weight(n, k, act_order=True) for _ in range(copies)]
    perm = torch.randperm(k, device="cuda").int()
    x = torch.randn(1, k, dtype=BF16, device="cuda")
    base = time_ms(*[lambda wb=wb: x @ wb.t() for wb in dense])
    for label, fns, launch in (
            ("g_idx", [lambda w=w: kernels.w4a16_gemm(x, w[0], w[1], w[2], GROUP, w[3])
                       for w in act], gemm_launch("w4a16", 1, n, k)),
            ("sorted + perm", [lambda w=w: kernels.w4a16_gemm(x, w[0], w[1], w[2], GROUP,
                                                              perm=perm) for w in weights],
             w4_decode_launch(1, n, k))):
        record(f"W4A16 act order ({label})", f"M1 N{n} K{k}", time_ms(*fns),
               moved_bytes(1, n, k), "B/s", bandwidth, "cuBLAS bf16", base, repr(launch))
    del act
