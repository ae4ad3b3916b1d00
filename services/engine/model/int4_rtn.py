"""Group-wise round-to-nearest 4-bit quantization of a weight [N out, K in], with the rules the
two formats' own quantizers use (no calibration data, no error compensation):

- GPTQ's (AutoGPTQ's Quantizer): the range of each group is widened to include 0; symmetric: scale
  = 2 max|w| / 15, zero 8; asymmetric: scale = (max - min) / 15, zero = round(-min / scale). A
  group of zeros gets the range [-1, 1]. A v1 checkpoint stores zero - 1, which a zero of 0 would
  wrap, so asymmetric zeros are kept >= 1 (a group with no negative weight then loses its top
  code's resolution rather than being misread).
- AWQ's (AutoAWQ's pseudo_quantize_tensor, zero_point=True): scale = max(max - min, 1e-5) / 15,
  zero = clamp(-round(min / scale), 0, 15).

Codes are clamp(round(w / scale) + zero, 0, 15); the last group may be partial (GPTQ)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_CODE = 15


@dataclass(frozen=True)
class Int4Groups:
    codes: torch.Tensor     # int32 [K, N], 0..15, input-major as both formats pack them
    zeros: torch.Tensor     # int32 [G, N]
    scales: torch.Tensor    # fp32 [G, N]

    def dequantize(self, group_size: int) -> torch.Tensor:
        """The fp32 weight [N, K] the codes stand for."""
        groups = torch.arange(self.codes.shape[0], device=self.codes.device) // group_size
        return ((self.codes - self.zeros[groups]).float() * self.scales[groups]).t()


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, G, group_size], the last group padded by repeating its first element (a
    value already in the group, so the padding changes no minimum or maximum)."""
    n, k = weight.shape
    pad = -k % group_size
    if pad:
        start = k - (k % group_size)
        weight = torch.cat([weight, weight[:, start:start + 1].expand(n, pad)], dim=1)
    return weight.reshape(n, -1, group_size)


def _codes(groups: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int) -> Int4Groups:
    codes = torch.clamp(torch.round(groups / scales[..., None]) + zeros[..., None], 0, MAX_CODE)
    codes = codes.reshape(groups.shape[0], -1)[:, :k]
    return Int4Groups(codes.t().contiguous().to(torch.int32),
                      zeros.t().contiguous().to(torch.int32), scales.t().contiguous().float())


def quantize_gptq_rtn(weight: torch.Tensor, group_size: int, sym: bool = True) -> Int4Groups:
    groups = _grouped(weight.float(), group_size)
    low = groups.amin(dim=-1).clamp(max=0)
    high = groups.amax(dim=-1).clamp(min=0)
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    if sym:
        high = torch.maximum(-low, high)
        scales = 2 * high / MAX_CODE
        zeros = torch.full_like(scales, (MAX_CODE + 1) // 2)
    else:
        scales = (high - low) / MAX_CODE
        zeros = torch.round(-low / scales).clamp(1, MAX_CODE)
    return _codes(groups, scales, zeros, weight.shape[1])


def quantize_awq_rtn(weight: torch.Tensor, group_size: int) -> Int4Groups:
    if weight.shape[1] % group_size:
        raise ValueError(f"AWQ needs the input size ({weight.shape[1]}) to be a multiple of the "
                         f"group size ({group_size})")
    groups = _grouped(weight.float(), group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = (high - low).clamp(min=1e-5) / MAX_CODE
    zeros = (-torch.round(low / scales)).clamp(0, MAX_CODE)
    return _codes(groups, scales, zeros, weight.shape[1])
