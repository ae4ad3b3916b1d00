"""GPTQ and AWQ 4-bit tensors decoded element by element, written from the formats' published
descriptions (AutoGPTQ's and AutoAWQ's packing, transformers' docs) and not from Tandem's code:
the independent reading the production unpacking is checked against.

GPTQ: qweight[k // 8][n] holds the code of (input k, output n) in bits 4*(k % 8) .. +3;
qzeros[g][n // 8] holds the zero of (group g, output n) in bits 4*(n % 8) .. +3, minus one in
checkpoint format "gptq" (v1: readers add one, masked to four bits), as is in "gptq_v2";
scales[g][n]; the group of input k is g_idx[k].
AWQ (GEMM): qweight[k][n // 8] and qzeros[k // group_size][n // 8] hold output n in the nibble i
where ORDER[i] == n % 8, ORDER = [0, 2, 4, 6, 1, 3, 5, 7]; scales[k // group_size][n]; no offset.
Either way weight[n][k] = (code - zero) * scale."""

from __future__ import annotations

import torch

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def nibble(word: int, index: int) -> int:
    return ((word & 0xFFFFFFFF) >> (4 * index)) & 0xF


def decode_gptq(qweight, qzeros, scales, g_idx, v1: bool) -> torch.Tensor:
    """-> fp32 weight [N out, K in]."""
    qweight, qzeros, g_idx = qweight.tolist(), qzeros.tolist(), g_idx.tolist()
    scales = scales.float().tolist()
    k_size, n_size = len(qweight) * 8, len(qweight[0])
    weight = [[0.0] * k_size for _ in range(n_size)]
    for k in range(k_size):
        g = g_idx[k]
        for n in range(n_size):
            code = nibble(qweight[k // 8][n], k % 8)
            zero = nibble(qzeros[g][n // 8], n % 8)
            if v1:
                zero = (zero + 1) & 0xF
            weight[n][k] = (code - zero) * scales[g][n]
    return torch.tensor(weight)


def decode_awq(qweight, qzeros, scales, group_size: int) -> torch.Tensor:
    """-> fp32 weight [N out, K in]."""
    qweight, qzeros, scales = qweight.tolist(), qzeros.tolist(), scales.float().tolist()
    k_size, n_size = len(qweight), len(qweight[0]) * 8
    weight = [[0.0] * k_size for _ in range(n_size)]
    for k in range(k_size):
        g = k // group_size
        for n in range(n_size):
            position = AWQ_PACK_ORDER.index(n % 8)
            code = nibble(qweight[k][n // 8], position)
            zero = nibble(qzeros[g][n // 8], position)
            weight[n][k] = (code - zero) * scales[g][n]
    return torch.tensor(weight)
