"""Split-K in one launch: the programs that share an output tile each reduce one slice of K,
store their fp32 partial sums in a workspace and count themselves in the tile's arrival counter;
the one that arrives last adds every slice's partials (and the bias), casts, writes the tile
and resets the counter to 0. No second kernel, no zeroing launch, and the launch can be
captured in a CUDA graph. Programs: program_id(0) the tile, program_id(1) the slice."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def finish_tile(acc, out_ptr, out_offs, part_ptr, part_offs, arrival_ptr, bias_ptr, cols, mask,
                M, N, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Write the tile `acc` (fp32, bias added, cast to the output's dtype); with SPLIT_K > 1,
    through the workspace part_ptr [SPLIT_K, M, N] (fp32): the slice that arrives last at
    this tile adds every slice's partial sums and resets the tile's counter."""
    if SPLIT_K > 1:
        tl.store(part_ptr + tl.program_id(1) * M * N + part_offs, acc, mask=mask)
        tl.debug_barrier()      # every thread's partial stored before the release below
        arrived = tl.atomic_add(arrival_ptr + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros_like(acc)
            for s in tl.static_range(SPLIT_K):   # from L2: other SMs wrote them
                acc += tl.load(part_ptr + s * M * N + part_offs, mask=mask, other=0.0,
                               cache_modifier=".cg")
            if HAS_BIAS:
                acc += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(arrival_ptr + tl.program_id(0), 0, sem="relaxed", scope="gpu")
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


class ArrivalCounters:
    """The per-tile counters, zero between launches (the last slice of a tile resets its own),
    so they are allocated and zeroed once per device and stream: two streams could run split-K
    launches at the same time, one stream runs them one after another. A grown set replaces
    the old one for new launches; the old one stays allocated, since a captured CUDA graph may
    still read it."""

    def __init__(self) -> None:
        self._counters: dict[tuple[torch.device, int], torch.Tensor] = {}
        self._outgrown: list[torch.Tensor] = []

    def get(self, device: torch.device, count: int) -> torch.Tensor:
        stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
        key = (device, stream)
        counters = self._counters.get(key)
        if counters is None or counters.numel() < count:
            if counters is not None:
                self._outgrown.append(counters)
            counters = torch.zeros(max(count, 1024), dtype=torch.int32, device=device)
            self._counters[key] = counters
        return counters


ARRIVALS = ArrivalCounters()


def split_k_buffers(out: torch.Tensor, tiles: int, split_k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(workspace, counters) for a launch of `tiles` output tiles in `split_k` slices of an
    output [M, N]; with one slice, the output itself stands in for both (never read)."""
    if split_k == 1:
        return out, out
    m, n = out.shape
    part = torch.empty((split_k, m, n), dtype=torch.float32, device=out.device)
    return part, ARRIVALS.get(out.device, tiles)
