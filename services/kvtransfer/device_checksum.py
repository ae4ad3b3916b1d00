"""A per-page checksum computed where the pages are (on the GPU for CUDA IPC), by both ends of a
transfer, so that no byte has to cross to the host to be checked.

A page's words (int32, kernels/page_copy.page_words) are laid out as rows x COLUMNS; the checksum
is the position-weighted sum of the row sums plus, shifted, the position-weighted sum of the
column sums, all in int64 (wrapping arithmetic is exact and order-independent, so every device
and every reduction order gives the same value). Any changed word changes a row sum; a zeroed or
missing tail (a truncated transfer) changes it; words moved between rows or columns change the
weights. It reads the pages twice; besides the sums it needs at most GROUP_BYTES of scratch."""

from __future__ import annotations

from typing import Sequence

import torch

from kernels.page_copy import page_words

COLUMNS = 1024
GROUP_BYTES = 32 * 2**20
_COLUMN_SHIFT = 1 << 32


def _columns(words_per_page: int) -> int:
    c = COLUMNS
    while words_per_page % c:
        c //= 2
    return c


def page_checksums(pool: torch.Tensor, block_ids: Sequence[int]) -> list[int]:
    """Checksums of pool[block_id] for each block id, in order (one host sync). Pages are read
    in groups of GROUP_BYTES: a run of consecutive blocks in place, others gathered, so the
    scratch memory stays bounded however large the transfer (the pool may fill the GPU)."""
    block_ids = list(block_ids)
    if not block_ids:
        return []
    words = page_words(pool)
    per_group = max(1, GROUP_BYTES // (words.shape[1] * words.element_size()))
    totals = []
    for start in range(0, len(block_ids), per_group):
        group = block_ids[start:start + per_group]
        if group == list(range(group[0], group[0] + len(group))):
            pages = words[group[0]:group[0] + len(group)]
        else:
            pages = words.index_select(0, torch.tensor(group, dtype=torch.int64, device=pool.device))
        totals.append(_checksums(pages))
    return [int(v) for v in torch.cat(totals).tolist()]


def checksums_of(pages: torch.Tensor) -> list[int]:
    """Checksums of each row of pages ([num_pages, words], an integer dtype)."""
    return [int(v) for v in _checksums(pages).tolist()]


def _checksums(pages: torch.Tensor) -> torch.Tensor:
    n, per_page = pages.shape
    cols = _columns(per_page)
    grid = pages.reshape(n, per_page // cols, cols)
    rows = grid.sum(dim=2, dtype=torch.int64)                  # [n, rows]
    columns = grid.sum(dim=1, dtype=torch.int64)               # [n, cols]
    row_w = torch.arange(1, rows.shape[1] + 1, dtype=torch.int64, device=pages.device)
    col_w = torch.arange(1, cols + 1, dtype=torch.int64, device=pages.device)
    return (rows * row_w).sum(dim=1) + (columns * col_w).sum(dim=1) * _COLUMN_SHIFT
