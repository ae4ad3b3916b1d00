"""Launch configurations of the INT8 and INT4 GEMMs, as data.

What changes the best tile is the number of rows M (decode's 1-16 rows are a weight stream, bound
by bandwidth; prefill's hundreds of rows are bound by the tensor cores), then the weight's shape
(how many output tiles there are to spread over the SMs, how long each K loop is). So a config is
looked up by (kernel, M bucket, N, K), with a per-bucket default for shapes not in the table.
The entries were chosen by the sweeps of benchmarks/kernels.py on an H200 (2026-11-26)."""

from __future__ import annotations

from dataclasses import dataclass

from kernels.arguments import KernelArgumentError


@dataclass(frozen=True)
class GemmLaunch:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1          # >1: K is cut into slices whose partial sums meet by fp32 atomic adds
    group_m: int = 8          # row tiles that share a band of weight columns (L2 reuse)
    swap_ab: bool = False     # W8A16: compute out^T = W x^T, the dequantized weight first

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise KernelArgumentError(f"launch.{name}", f"must be a power of two >= 16, got {size}")
        if self.split_k < 1:
            raise KernelArgumentError("launch.split_k", f"must be >= 1, got {self.split_k}")


M_BUCKETS = (16, 64, 256)        # a bucket holds M up to its bound; the last one everything above


def m_bucket(m: int) -> int:
    for bound in M_BUCKETS:
        if m <= bound:
            return bound
    return M_BUCKETS[-1] + 1


_W8A16_DEFAULTS = {
    16: GemmLaunch(16, 64, 128, num_warps=4, num_stages=5),
    64: GemmLaunch(64, 64, 128, num_warps=4, num_stages=4),
    256: GemmLaunch(256, 128, 64, num_warps=8, num_stages=3, swap_ab=True),
    257: GemmLaunch(128, 128, 64, num_warps=8, num_stages=3),
}
_W8A8_DEFAULTS = {
    16: GemmLaunch(16, 64, 256, num_warps=4, num_stages=4),
    64: GemmLaunch(64, 64, 128, num_warps=4, num_stages=4),
    256: GemmLaunch(128, 128, 128, num_warps=8, num_stages=3),
    257: GemmLaunch(128, 128, 128, num_warps=8, num_stages=3),
}

# W4A16: the same tiles as W8A16, a K step of one 128-channel group. Decode reads a quarter of
# bf16's bytes per weight, so a tile's loop is short and few output tiles leave SMs idle:
# the 8B entries below split K until there are about two CTAs per SM (132 SMs on an H200).
# They are first estimates, not yet swept on the card (`benchmarks/kernels.py --sweep w4a16`).
_W4A16_DEFAULTS = {
    16: GemmLaunch(16, 64, 128, num_warps=4, num_stages=4),
    64: GemmLaunch(64, 64, 128, num_warps=4, num_stages=4),
    256: GemmLaunch(128, 128, 64, num_warps=8, num_stages=3),
    257: GemmLaunch(128, 128, 64, num_warps=8, num_stages=3),
}
_DEFAULTS = {"w8a16": _W8A16_DEFAULTS, "w8a8": _W8A8_DEFAULTS, "w4a16": _W4A16_DEFAULTS}

# (kernel, M bucket, N, K) -> launch; Llama-3.1-8B projections first.
GEMM_LAUNCHES: dict[tuple[str, int, int, int], GemmLaunch] = {
    # W8A16, swept on an H200 on 2026-12-02 (benchmarks/kernels.py --sweep w8a16): at 16 rows
    # narrow column bands (split K for the long down projection); at 64 a longer K step; at
    # 256 the swapped orientation, K split until there are ~100+ programs.
    ("w8a16", 16, 6144, 4096): GemmLaunch(16, 64, 128, num_warps=4, num_stages=4, split_k=4),
    ("w8a16", 16, 4096, 4096): GemmLaunch(16, 32, 256, num_warps=4, num_stages=4),
    ("w8a16", 16, 28672, 4096): GemmLaunch(16, 32, 128, num_warps=2, num_stages=4),
    ("w8a16", 16, 14336, 4096): GemmLaunch(16, 64, 128, num_warps=4, num_stages=5),
    ("w8a16", 16, 4096, 14336): GemmLaunch(16, 64, 128, num_warps=4, num_stages=4, split_k=4),
    ("w8a16", 64, 6144, 4096): GemmLaunch(64, 64, 256, num_warps=4, num_stages=3),
    ("w8a16", 64, 4096, 4096): GemmLaunch(64, 64, 256, num_warps=4, num_stages=3, split_k=2),
    ("w8a16", 64, 28672, 4096): GemmLaunch(64, 128, 64, num_warps=4, num_stages=4),
    ("w8a16", 64, 4096, 14336): GemmLaunch(64, 64, 256, num_warps=4, num_stages=3, split_k=2),
    ("w8a16", 256, 6144, 4096): GemmLaunch(256, 128, 64, 8, 3, split_k=2, swap_ab=True),
    ("w8a16", 256, 4096, 4096): GemmLaunch(256, 128, 64, 8, 3, split_k=4, swap_ab=True),
    ("w8a16", 256, 28672, 4096): GemmLaunch(256, 128, 64, 8, 3, swap_ab=True),
    ("w8a16", 256, 14336, 4096): GemmLaunch(256, 128, 64, 8, 3, swap_ab=True),
    ("w8a16", 256, 4096, 14336): GemmLaunch(256, 128, 64, 8, 3, split_k=4, swap_ab=True),
    # Few output tiles with a long K: narrower tiles keep more SMs busy.
    ("w8a8", 256, 4096, 14336): GemmLaunch(64, 128, 256, num_warps=8, num_stages=3),
    ("w4a16", 16, 6144, 4096): GemmLaunch(16, 64, 128, num_warps=4, num_stages=4, split_k=3),
    ("w4a16", 16, 4096, 4096): GemmLaunch(16, 64, 128, num_warps=4, num_stages=4, split_k=4),
    ("w4a16", 16, 4096, 14336): GemmLaunch(16, 64, 128, num_warps=4, num_stages=4, split_k=4),
}


@dataclass(frozen=True)
class W4DecodeLaunch:
    """A launch of the W4A16 decode kernels (w4a16_decode.py), M <= 16: block_n output columns
    per program, K steps of block_k input channels, K cut into split_k slices that meet in the
    same launch; use_dot multiplies on the tensor cores (all rows in one program, padded to 16),
    else by FMAs (one row per program). num_stages only matters with use_dot (the FMA kernel's
    loads are not pipelined by Triton)."""
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    use_dot: bool = False

    def __post_init__(self) -> None:
        for name, least in (("block_n", 8), ("block_k", 8)):
            size = getattr(self, name)
            if size < least or size & (size - 1):
                raise KernelArgumentError(f"launch.{name}",
                                          f"must be a power of two >= {least}, got {size}")
        if self.split_k < 1:
            raise KernelArgumentError("launch.split_k", f"must be >= 1, got {self.split_k}")


DECODE_M_BUCKETS = (1, 4, 16)     # the decode kernels' row counts: M up to each bound
WARPS_WANTED = 8 * 132            # about eight warps per SM of an H200 keep its weights in flight

# (M bucket, N, K) -> launch, for shapes whose sweep (`benchmarks/kernels.py --sweep w4a16`)
# found better than the rule in w4_decode_launch: one H200, 2026-12-02, the four projections of
# Llama-3.1-8B (q|k|v, o, gate|up, down; the rule won the rest).
W4_DECODE_LAUNCHES: dict[tuple[int, int, int], W4DecodeLaunch] = {
    (1, 6144, 4096): W4DecodeLaunch(64, 256, split_k=8, num_warps=2),
    (4, 6144, 4096): W4DecodeLaunch(64, 256, split_k=4, num_warps=2, use_dot=True),
    (16, 6144, 4096): W4DecodeLaunch(128, 256, split_k=4, num_warps=4, use_dot=True),
    (4, 4096, 4096): W4DecodeLaunch(64, 256, split_k=4, num_warps=2, use_dot=True),
    (16, 4096, 4096): W4DecodeLaunch(128, 512, split_k=4, num_warps=4, num_stages=4, use_dot=True),
    (1, 28672, 4096): W4DecodeLaunch(64, 512, split_k=4, num_warps=2),
    (4, 28672, 4096): W4DecodeLaunch(128, 256, split_k=2, num_warps=4, use_dot=True),
    (16, 28672, 4096): W4DecodeLaunch(256, 256, split_k=2, num_warps=8, use_dot=True),
    (4, 4096, 14336): W4DecodeLaunch(64, 256, split_k=4, num_warps=2, use_dot=True),
    (16, 4096, 14336): W4DecodeLaunch(128, 512, split_k=4, num_warps=4, num_stages=4, use_dot=True),
}


def decode_m_bucket(m: int) -> int | None:
    """The decode bucket of M rows, or None when M is past the decode kernels' range."""
    for bound in DECODE_M_BUCKETS:
        if m <= bound:
            return bound
    return None


def w4_decode_launch(m: int, n: int, k: int) -> W4DecodeLaunch | None:
    """The table's launch, else a first estimate (not yet swept on the card): FMA for one row,
    tensor cores for more, tiles that gave the fewest instructions per weight in the compiled
    code (each thread holds several packed rows of one group), and K split until about
    WARPS_WANTED warps run, each slice keeping at least two K steps. The tensor-core kernel's
    last slice re-reads every slice's [16, block_n] partial sums, so it splits at most 4 ways.
    None when M is past the decode range."""
    bucket = decode_m_bucket(m)
    if bucket is None:
        return None
    found = W4_DECODE_LAUNCHES.get((bucket, n, k))
    if found is not None:
        return found
    if bucket == 1:
        block_n, block_k, warps, use_dot, most = 64, 256, 2, False, 8
    else:
        block_n, block_k, warps, use_dot, most = 128, 256, 2, True, 4
    programs = -(-n // block_n)
    wanted = -(-WARPS_WANTED // (warps * programs))
    split_k = max(1, min(wanted, most, k // (2 * block_k)))
    return W4DecodeLaunch(block_n, block_k, split_k, num_warps=warps, use_dot=use_dot)


def gemm_launch(kernel: str, m: int, n: int, k: int) -> GemmLaunch:
    bucket = m_bucket(m)
    found = GEMM_LAUNCHES.get((kernel, bucket, n, k))
    if found is not None:
        return found
    if kernel not in _DEFAULTS:
        raise KernelArgumentError("kernel", f"must be one of {sorted(_DEFAULTS)}, got {kernel!r}")
    return _DEFAULTS[kernel][bucket]
