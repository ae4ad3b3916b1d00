"""Random quantized weights on the GPU for the GEMM benchmarks, each with the bf16 weight it
stands for (the cuBLAS baseline's operand)."""

from __future__ import annotations

import torch

BF16 = torch.bfloat16


def int8_weight(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    scale = torch.rand(n, device="cuda") * 1e-3 + 1e-4
    return w, scale, (w.to(BF16) * scale[:, None].to(BF16)).contiguous()


def int4_weight(n: int, k: int, group: int = 128, act_order: bool = False):
    """Random GPTQ-layout words (any bits are valid codes), fp16 scales, and the bf16 weight
    [N, K] they stand for."""
    from kernels.w4a16_gemm import dequantize_w4_ref
    qweight = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(-2**31, 2**31 - 1, (k // group, n // 8), dtype=torch.int32,
                           device="cuda")
    scales = (torch.rand(k // group, n, device="cuda") * 1e-3 + 1e-4).half()
    g_idx = (torch.arange(k, device="cuda") // group)[torch.randperm(k, device="cuda")].int() \
        if act_order else None
    dense = dequantize_w4_ref(qweight, qzeros, scales, group, g_idx).t().to(BF16).contiguous()
    return qweight, qzeros, scales, g_idx, dense
