"""The launch configurations the W8A16 sweep of benchmarks/kernels.py times, per M bucket."""

from __future__ import annotations

from kernels.gemm_launch import GemmLaunch


def _l(bm, bn, bk, warps, stages, split_k=1, swap=False) -> GemmLaunch:
    return GemmLaunch(bm, bn, bk, warps, stages, split_k=split_k, swap_ab=swap)


# Per M bucket. Decode (16): tile widths that spread the weight's columns evenly over the SMs
# (the stream is bound per SM: an SM with one more tile than its neighbours sets the time).
# 64 and 256: tensor-core tiles, in both operand orders (swap_ab puts the dequantized weight
# first, where the MMA reads it from registers).
W8A16_CANDIDATES = {
    16: [_l(16, 64, 128, 4, 4), _l(16, 32, 256, 4, 4, 2), _l(16, 16, 512, 4, 4),
         _l(16, 16, 256, 4, 4), _l(16, 16, 1024, 4, 3), _l(16, 16, 512, 2, 4),
         _l(16, 16, 512, 4, 5), _l(16, 32, 256, 4, 4), _l(16, 32, 512, 4, 3),
         _l(16, 16, 512, 4, 4, 2), _l(16, 16, 256, 2, 6), _l(16, 64, 128, 4, 5),
         _l(16, 64, 128, 4, 4, swap=True), _l(16, 64, 256, 4, 4, swap=True),
         _l(16, 128, 128, 4, 4, swap=True), _l(16, 64, 256, 4, 3, 2, swap=True),
         _l(16, 128, 256, 8, 3, swap=True), _l(16, 64, 512, 4, 3, swap=True),
         # more programs than SMs several times over, so that no SM is left with one more tile
         _l(16, 64, 128, 4, 4, 2), _l(16, 64, 128, 4, 4, 3), _l(16, 32, 128, 4, 4, 2),
         _l(16, 64, 256, 4, 3, 2), _l(16, 32, 256, 4, 4, 3), _l(16, 128, 128, 4, 4, 4),
         _l(16, 64, 128, 4, 4, 4), _l(16, 32, 128, 2, 4, 1), _l(16, 64, 128, 8, 4, 1)],
    64: [_l(64, 64, 128, 4, 4, 2), _l(64, 64, 256, 4, 3, 2), _l(32, 64, 256, 4, 4, 2, swap=True),
         _l(64, 64, 128, 4, 4, 2, swap=True),
         _l(64, 64, 128, 4, 4), _l(64, 128, 64, 4, 4), _l(64, 128, 128, 8, 3),
         _l(32, 128, 128, 4, 4), _l(64, 64, 256, 4, 3),
         _l(64, 64, 128, 4, 4, swap=True), _l(64, 128, 64, 4, 4, swap=True),
         _l(64, 128, 128, 4, 3, swap=True), _l(32, 128, 128, 4, 4, swap=True),
         _l(64, 256, 64, 8, 3, swap=True), _l(32, 64, 256, 4, 4, swap=True)],
    256: [_l(128, 128, 64, 8, 3, 2), _l(256, 128, 64, 8, 3, 2, swap=True),
          _l(256, 128, 64, 8, 3, 4, swap=True), _l(128, 128, 64, 8, 3, 4),
          _l(128, 128, 64, 8, 3), _l(128, 256, 64, 8, 3), _l(128, 128, 128, 8, 3),
          _l(64, 256, 64, 8, 4), _l(64, 128, 64, 4, 4),
          _l(128, 128, 64, 8, 3, swap=True), _l(64, 256, 64, 8, 3, swap=True),
          _l(128, 256, 64, 8, 3, swap=True), _l(256, 128, 64, 8, 3, swap=True),
          _l(64, 128, 128, 4, 3, swap=True), _l(128, 128, 128, 8, 3, swap=True)],
}
