"""W4A16 products of many rows, two ways, beside cuBLAS bf16, on the 8B projections: where the
dequantize-then-GEMM path (kernels/w4_dequantize.py) overtakes the 4-bit kernels.

    python -m benchmarks.w4a16_many_rows [--rows 16,32,48,64,128,256,512] [--json PATH]

Per projection and row count, device time of one product (benchmarks/measure.time_ms: replayed
in a CUDA graph, weights rotated so that none is read from L2): the 4-bit kernels as picked
below DEQUANT_MIN_ROWS (w4a16_decode's up to 16 rows, the W4A16 GEMM's launch table above),
the weight dequantized and multiplied by cuBLAS, the dequantization alone, and cuBLAS on a bf16
weight. GPTQ layout, group 128, random codes, bf16 activations."""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.measure import time_ms
from kernels.gemm_launch import gemm_launch
from kernels.w4_dequantize import dequantize_w4, dequantized_product
from kernels.w4a16_gemm import w4a16_gemm

SHAPES = {"q|k|v": (6144, 4096), "o": (4096, 4096), "gate|up": (28672, 4096),
          "down": (4096, 14336)}
GROUP = 128
ROTATE = 4


def _int4(n: int, k: int, device: torch.device):
    qweight = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=device)
    qzeros = torch.randint(-2**31, 2**31 - 1, (k // GROUP, n // 8), dtype=torch.int32,
                           device=device)
    scales = (torch.rand(k // GROUP, n, device=device) * 0.01).to(torch.bfloat16)
    return qweight, qzeros, scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16,32,48,64,128,256,512")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; us per product; ratios to cuBLAS bf16", flush=True)
    print(f"{'shape':<8} {'M':>4} {'4-bit':>9} {'dequant+GEMM':>13} {'dequant':>9} "
          f"{'cuBLAS':>9} {'4-bit/cuBLAS':>13} {'dq+GEMM/cuBLAS':>15}")
    rows = []
    for name, (n, k) in SHAPES.items():
        weights = [_int4(n, k, device) for _ in range(ROTATE)]
        dense = [torch.randn(n, k, device=device, dtype=torch.bfloat16) for _ in range(2)]
        for m in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            launch = None if m <= 16 else gemm_launch("w4a16", m, n, k)
            four_bit = 1000 * time_ms(*[
                (lambda w=w: w4a16_gemm(x, *w, GROUP, launch=launch)) for w in weights])
            dq_gemm = 1000 * time_ms(*[
                (lambda w=w: dequantized_product(x, *w, GROUP, None, None, None))
                for w in weights])
            dq = 1000 * time_ms(*[
                (lambda w=w: dequantize_w4(*w, GROUP, None, torch.bfloat16)) for w in weights])
            cublas = 1000 * time_ms(*[(lambda w=w: x @ w.t()) for w in dense])
            rows.append({"shape": name, "m": m, "four_bit_us": four_bit,
                         "dequant_gemm_us": dq_gemm, "dequant_us": dq, "cublas_us": cublas})
            print(f"{name:<8} {m:>4} {four_bit:>9.1f} {dq_gemm:>13.1f} {dq:>9.1f} {cublas:>9.1f} "
                  f"{cublas / four_bit:>12.2f}x {cublas / dq_gemm:>14.2f}x", flush=True)
        del weights, dense
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device),
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
