"""Kernel benchmarks on one GPU: each op's time and achieved bandwidth or FLOP rate, next to the
ceilings (a large device-to-device copy; an 8192^3 bf16 matmul) and the torch baselines (SDPA,
cuBLAS bf16, torch._int_mm; W8A16 beside W4A16) measured in the same run, at Llama-3.1-8B
shapes in bf16.

    python -m benchmarks.kernels --out kernels.json [--sweep decode,prefill,gemv,w8a16,w8a8,w4a16]
        [--only ...] [--w4a16-shapes qkv,o,gate_up,down]

--sweep also times each candidate launch config of the tunable kernels (checking its output
against the default's) and reports the best, which is how the tables in kernels/ were filled.
The W4A16 part is benchmarks/w4a16_kernels.py, the one-row GEMV benchmarks/gemv_kernels.py."""

from __future__ import annotations

import argparse
import datetime
import json
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
import triton
import triton.testing

import kernels
from benchmarks.gemv_kernels import bench_gemv
from benchmarks.measure import ROWS, record, rel_err, sweep, time_ms
from benchmarks.quantized_weights import int8_weight
from benchmarks.w4a16_kernels import W4A16_SHAPE_NAMES, bench_w4a16
from benchmarks.w8a16_candidates import W8A16_CANDIDATES
from kernels.gemm_launch import GemmLaunch, gemm_launch, m_bucket
from kernels.paged_decode_attention import DecodeLaunch, default_launch
from kernels.prefill_attention import PrefillLaunch, PREFILL_LAUNCHES
from kernels.rms_norm import rms_norm_ref
from kernels.rotary import rotary_ref
from kernels.silu_and_mul import silu_and_mul_ref
from kernels.w8a8_gemm import int8_scaled_mm

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE, BLOCK = 32, 8, 128, 4096, 14336, 16
BF16 = torch.bfloat16


def ceilings() -> tuple[float, float]:
    src = torch.randn(2**29, dtype=BF16, device="cuda")          # 1 GiB
    dst = torch.empty_like(src)
    # Large single ops: eager timing has no launch gap to hide (a graph-captured 1 GiB copy
    # runs as a memcpy node on the copy engine, slower than the SM copy eager uses).
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    bandwidth = 2 * src.numel() * 2 / (copy_ms * 1e-3)
    del src, dst
    a = torch.randn(8192, 8192, dtype=BF16, device="cuda")
    b = torch.randn(8192, 8192, dtype=BF16, device="cuda")
    mm_ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    flops = 2 * 8192**3 / (mm_ms * 1e-3)
    record("ceiling: D2D copy", "1 GiB", copy_ms, 2 * 2**30, "B/s", bandwidth)
    record("ceiling: cuBLAS bf16 mm", "8192^3", mm_ms, 2 * 8192**3, "FLOP/s", flops)
    return bandwidth, flops


def paged_pool(num_blocks: int):
    pool = torch.randn(num_blocks, 2, 2, BLOCK, KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    return pool[:, 1, 0], pool[:, 1, 1]


def block_tables(batch: int, context: int, num_blocks: int, width: int) -> torch.Tensor:
    """Distinct random pages for each sequence's context, in a table `width` tokens wide (the
    decode graphs' tables are as wide as their bucket; the columns past a context are unused)."""
    per_seq = context // BLOCK
    tables = torch.zeros(batch, width // BLOCK, dtype=torch.int32, device="cuda")
    pages = torch.randperm(num_blocks, device="cuda")[:batch * per_seq].int()
    tables[:, :per_seq] = pages.view(batch, per_seq)
    return tables


# (batch, context, table width): the kernel alone, then as the engine's graphs run it (a
# 4,096-token table, the smallest width bucket) at the contexts of benchmarks/engine_gpu.py.
DECODE_CASES = ((64, 4096, 4096), (1, 32768, 32768), (256, 1024, 1024),
                (1, 1024, 4096), (64, 576, 4096), (256, 576, 4096))


def decode_candidates(default: DecodeLaunch, width: int) -> list[DecodeLaunch]:
    usable = width // (default.min_tiles * default.block_n)
    counts = sorted({p for p in (1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256) if p <= usable}
                    | {default.partitions})
    found = [replace(default, partitions=p) for p in counts]
    found += [replace(default, partitions=p, min_tiles=t) for p in counts if p > 1 for t in (1, 4)]
    found += [replace(default, num_stages=2), replace(default, block_n=32, min_tiles=4)]
    return found


def bench_decode(bandwidth: float, do_sweep: bool) -> None:
    for batch, context, width in DECODE_CASES:
        key_cache, value_cache = paged_pool(batch * context // BLOCK)
        tables = block_tables(batch, context, key_cache.shape[0], width)
        lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, HEADS, HEAD_DIM, dtype=BF16, device="cuda")
        scale = 1 / math.sqrt(HEAD_DIM)
        run = lambda launch: kernels.paged_decode_attention(q, key_cache, value_cache, tables,
                                                            lens, scale, launch=launch)
        # Baseline: SDPA over contiguous K/V (no paging), GQA inside SDPA.
        k = torch.randn(batch, KV_HEADS, context, HEAD_DIM, dtype=BF16, device="cuda")
        v = torch.randn_like(k)
        qs = q.view(batch, HEADS, 1, HEAD_DIM)
        sdpa = lambda: F.scaled_dot_product_attention(qs, k, v, scale=scale, enable_gqa=True)
        sdpa_ms = time_ms(sdpa)
        launch = default_launch(batch, KV_HEADS, width, HEAD_DIM, q.device)
        name = f"b{batch} ctx{context}" + (f" in {width}" if width != context else "")
        if do_sweep:
            found, _ = sweep(f"decode {name}", decode_candidates(launch, width), run,
                             run(launch))
            print(f"  sweep decode {name}: default {launch}, best {found}")
        kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
        record("paged decode attention", f"{name} 32/8 d128", time_ms(lambda: run(launch)),
               kv_bytes, "B/s", bandwidth, "SDPA (contiguous K/V, enable_gqa)", sdpa_ms, str(launch))
        del key_cache, value_cache, k, v


def bench_prefill(flops_ceiling: float, do_sweep: bool) -> None:
    # Long prompts, and the 512-token prompts that fill the 8,192-token steps of a burst.
    for seqs, length in ((8, 2048), (16, 512)):
        _bench_prefill_shape(flops_ceiling, do_sweep, seqs, length)


def _bench_prefill_shape(flops_ceiling: float, do_sweep: bool, seqs: int, length: int) -> None:
    key_cache, value_cache = paged_pool(seqs * length // BLOCK)
    tables = block_tables(seqs, length, key_cache.shape[0], length)
    lens = torch.full((seqs,), length, dtype=torch.int32, device="cuda")
    starts = torch.arange(seqs + 1, dtype=torch.int32, device="cuda") * length
    q = torch.randn(seqs * length, HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    scale = 1 / math.sqrt(HEAD_DIM)
    run = lambda launch: kernels.prefill_attention(q, key_cache, value_cache, tables, starts, lens,
                                                   scale, launch=launch)
    # Baseline: SDPA's flash backend on contiguous, head-expanded K/V.
    qs = q.view(seqs, length, HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    ks = torch.randn(seqs, HEADS, length, HEAD_DIM, dtype=BF16, device="cuda")
    vs = torch.randn_like(ks)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash_ms = time_ms(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                                   scale=scale))
    launch = PREFILL_LAUNCHES[HEAD_DIM]
    if do_sweep:
        candidates = [PrefillLaunch(128, 64, 8, 2), PrefillLaunch(128, 64, 8, 3),
                      PrefillLaunch(128, 128, 8, 2), PrefillLaunch(128, 128, 8, 3),
                      PrefillLaunch(128, 32, 4, 3), PrefillLaunch(128, 64, 4, 3),
                      PrefillLaunch(64, 64, 4, 3), PrefillLaunch(64, 128, 4, 2),
                      PrefillLaunch(64, 32, 4, 4), PrefillLaunch(128, 128, 16, 2)]
        found, _ = sweep("prefill", candidates, run, run(launch))
        launch = found or launch
    flops = 2 * seqs * length * length * HEAD_DIM * HEADS        # causal: half of 4 L^2 d h
    record("prefill attention (paged)", f"{seqs}x{length} causal 32/8 d128",
           time_ms(lambda: run(launch)), flops, "FLOP/s", flops_ceiling,
           "SDPA flash (contiguous)", flash_ms, str(launch))


def bench_elementwise(bandwidth: float) -> None:
    tokens = 8192
    key = torch.randn(tokens, KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda")
    value = torch.randn_like(key)
    key_cache, value_cache = paged_pool(tokens // BLOCK * 2)
    slots = torch.randperm(key_cache.shape[0] * BLOCK, device="cuda")[:tokens]
    ours = time_ms(lambda: kernels.write_kv_pages(key, value, key_cache, value_cache, slots))
    blocks, offsets = slots // BLOCK, slots % BLOCK
    base = time_ms(lambda: (key_cache.index_put_((blocks, offsets), key),
                            value_cache.index_put_((blocks, offsets), value)))
    record("KV page write", f"{tokens} tok 8x128", ours, 4 * key.numel() * 2, "B/s", bandwidth,
           "torch index_put", base)

    x = torch.randn(tokens, HIDDEN, dtype=BF16, device="cuda")
    residual = torch.randn_like(x)
    weight = torch.randn(HIDDEN, dtype=BF16, device="cuda")
    ours = time_ms(lambda: kernels.rms_norm(x, weight, 1e-5, residual))
    base = time_ms(lambda: rms_norm_ref(x, weight, 1e-5, residual))
    record("RMSNorm + residual", f"{tokens}x{HIDDEN}", ours, 4 * x.numel() * 2, "B/s", bandwidth,
           "torch eager", base)

    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, dtype=BF16, device="cuda")
    q = qkv[:, :HEADS * HEAD_DIM].view(tokens, HEADS, HEAD_DIM)
    k = qkv[:, HEADS * HEAD_DIM:(HEADS + KV_HEADS) * HEAD_DIM].view(tokens, KV_HEADS, HEAD_DIM)
    cache = torch.randn(8192, HEAD_DIM, device="cuda")
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    ours = time_ms(lambda: kernels.rotary(q, k, positions, cache))
    base = time_ms(lambda: rotary_ref(q, k, positions, cache))
    record("rotary", f"{tokens} tok 32+8 heads", ours, 2 * (q.numel() + k.numel()) * 2, "B/s",
           bandwidth, "torch eager", base)
    for n in (1, 256, tokens):       # a decode of one, of a full batch, a prefill step
        args = (q[:n], k[:n], qkv[:n, (HEADS + KV_HEADS) * HEAD_DIM:].view(n, KV_HEADS, HEAD_DIM),
                positions[:n], cache, key_cache, value_cache, slots[:n])
        ours = time_ms(lambda: kernels.rotary_kv_write(*args))
        base = time_ms(lambda: kernels.write_kv_pages(
            kernels.rotary(*args[:2], *args[3:5])[1], args[2], *args[5:]))
        moved = 2 * (q[:n].numel() + 2 * k[:n].numel()) * 2
        record("rotary + KV page write", f"{n} tok 32+8 heads", ours, moved, "B/s", bandwidth,
               "rotary, then KV page write", base)

    gate_up = torch.randn(tokens, 2 * INTERMEDIATE, dtype=BF16, device="cuda")
    ours = time_ms(lambda: kernels.silu_and_mul(gate_up))
    base = time_ms(lambda: silu_and_mul_ref(gate_up))
    record("SiLU-and-mul", f"{tokens}x{INTERMEDIATE}", ours, 1.5 * gate_up.numel() * 2, "B/s",
           bandwidth, "torch eager", base)


# Llama-3.1-8B's projections as the engine runs them (q|k|v and gate|up merged).
LLAMA_8B_PROJECTIONS = ((6144, HIDDEN), (HIDDEN, HIDDEN), (2 * INTERMEDIATE, HIDDEN),
                        (HIDDEN, INTERMEDIATE))


def bench_w8a16(bandwidth: float, do_sweep: bool) -> None:
    for n, k in LLAMA_8B_PROJECTIONS:
        weights = [int8_weight(n, k) for _ in range(4)]       # rotated: 4 x 58 MB > L2
        w, scale, w_bf16 = weights[0]
        ours_fns = lambda x, launch: [lambda w=w, s=s: kernels.w8a16_gemm(x, w, s, launch=launch)
                                      for w, s, _ in weights]
        best: dict[int, GemmLaunch] = {}
        if do_sweep:
            for bucket, candidates in W8A16_CANDIDATES.items():
                x = torch.randn(bucket, k, dtype=BF16, device="cuda")
                reference = x @ w_bf16.t()
                best_ms = math.inf
                for launch in candidates:
                    try:
                        err = rel_err(kernels.w8a16_gemm(x, w, scale, launch=launch), reference)
                        ms = time_ms(*ours_fns(x, launch)) if err < 2e-2 else math.inf
                    except Exception as exc:     # a config the compiler rejects
                        print(f"  sweep w8a16 M{bucket} {n}x{k}: {launch} failed: "
                              f"{type(exc).__name__}: {str(exc)[:80]}")
                        continue
                    print(f"  sweep w8a16 M{bucket} {n}x{k}: {launch} err={err:.2e} {ms * 1e3:.1f} us")
                    if ms < best_ms:
                        best[bucket], best_ms = launch, ms
        for m in (1, 4, 16, 64, 256):
            x = torch.randn(m, k, dtype=BF16, device="cuda")
            launch = best.get(m_bucket(m)) or gemm_launch("w8a16", m, n, k)
            ours = time_ms(*ours_fns(x, launch))
            base = time_ms(*[lambda wb=wb: x @ wb.t() for _, _, wb in weights])
            record("W8A16 GEMM", f"M{m} N{n} K{k}", ours, n * k + 2 * m * (k + n), "B/s",
                   bandwidth, "cuBLAS bf16", base, str(launch))
        del w, w_bf16, weights


def bench_w8a8(flops_ceiling: float, bandwidth: float, do_sweep: bool) -> None:
    for n, k in ((INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)):
        weights = [int8_weight(n, k) for _ in range(2)]       # rotated: 2 x 58 MB > L2
        w, scale, _ = weights[0]
        for m in (64, 256, 1024, 4096):
            x = torch.randn(m, k, dtype=BF16, device="cuda")
            xq, xs = kernels.quantize_rows(x)
            record("per-token INT8 quantize", f"M{m} K{k}", time_ms(lambda: kernels.quantize_rows(x)),
                   3 * m * k + 4 * m, "B/s", bandwidth)
            launch = gemm_launch("w8a8", m, n, k)
            if do_sweep and m == 256:
                run = lambda cfg: int8_scaled_mm(xq, xs, w, scale, None, BF16, cfg)
                candidates = [GemmLaunch(128, 128, 128, 8, 3), GemmLaunch(128, 64, 256, 4, 3),
                              GemmLaunch(128, 128, 64, 4, 4), GemmLaunch(64, 64, 512, 4, 3),
                              GemmLaunch(128, 32, 256, 4, 4), GemmLaunch(64, 128, 256, 8, 3),
                              GemmLaunch(128, 128, 128, 8, 2), GemmLaunch(128, 64, 128, 4, 5)]
                found, _ = sweep(f"w8a8 M{m} {n}x{k}", candidates, run, run(launch))
                launch = found or launch
            ours = time_ms(*[lambda w=w, s=s: kernels.w8a8_gemm(x, w, s, launch=launch)
                             for w, s, _ in weights])
            gemm_only = time_ms(*[lambda w=w, s=s: int8_scaled_mm(xq, xs, w, s, None, BF16, launch)
                                  for w, s, _ in weights])
            base = time_ms(*[lambda wb=wb: x @ wb.t() for _, _, wb in weights])
            flops = 2 * m * n * k
            record("W8A8 GEMM (quant + mm)", f"M{m} N{n} K{k}", ours, flops, "FLOP/s",
                   flops_ceiling, "cuBLAS bf16", base, str(launch))
            try:
                int_mm = time_ms(*[lambda w=w: torch._int_mm(xq, w.t()) for w, _, _ in weights])
                record("W8A8 GEMM only", f"M{m} N{n} K{k}", gemm_only, flops, "FLOP/s",
                       flops_ceiling, "torch._int_mm", int_mm, str(launch))
            except RuntimeError as exc:
                print(f"torch._int_mm unavailable at M{m} N{n} K{k}: {exc}")
        del w, weights


def print_table(header: str) -> None:
    print(header)
    print(f"{'op':28} {'shape':26} {'us':>9} {'rate':>12} {'ceil%':>6} {'baseline':>34} "
          f"{'base us':>9} {'x':>6}  config")
    for r in ROWS:
        rate = f"{r['rate'] / 1e12:.0f} TFLOP/s" if r["unit"] == "FLOP/s" \
            else f"{r['rate'] / 1e9:.0f} GB/s"
        base = f"{r['baseline_ms'] * 1e3:9.1f}" if r["baseline_ms"] else " " * 9
        speed = f"{r['speedup']:6.2f}" if r["speedup"] else " " * 6
        print(f"{r['op']:28} {r['shape']:26} {r['ms'] * 1e3:9.1f} {rate:>12} "
              f"{100 * r['of_ceiling']:5.0f}% {r['baseline']:>34} {base} {speed}  {r['config']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kernels.json")
    parser.add_argument("--sweep", default="", help="comma list of ops whose launch configs to sweep")
    parser.add_argument("--only", default="",
                        help="comma list: decode,prefill,elementwise,gemv,w8a16,w8a8,w4a16")
    parser.add_argument("--w4a16-shapes", default=",".join(W4A16_SHAPE_NAMES),
                        help="comma list of the W4A16 shapes to run (default: %(default)s)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    swept = set(filter(None, args.sweep.split(",")))
    want = lambda name: not only or name in only
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    bandwidth, flops = ceilings()
    if want("decode"):
        bench_decode(bandwidth, "decode" in swept)
    if want("prefill"):
        bench_prefill(flops, "prefill" in swept)
    if want("elementwise"):
        bench_elementwise(bandwidth)
    if want("gemv"):
        bench_gemv(bandwidth, "gemv" in swept)
    if want("w8a16"):
        bench_w8a16(bandwidth, "w8a16" in swept)
    if want("w8a8"):
        bench_w8a8(flops, bandwidth, "w8a8" in swept)
    if want("w4a16"):
        bench_w4a16(bandwidth, "w4a16" in swept, args.w4a16_shapes.split(","))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"{device}, {stamp}, torch {torch.__version__}, triton {triton.__version__}"
    with open(args.out, "w") as f:
        json.dump(dict(device=device, date=stamp, torch=torch.__version__,
                       triton=triton.__version__, rows=ROWS), f, indent=1)
    print_table(header)


if __name__ == "__main__":
    main()
