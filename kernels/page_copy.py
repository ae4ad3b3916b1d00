"""Page copy: move whole KV pages from one pool to another by block id, in one launch.

`dst[dst_ids[i]] = src[src_ids[i]]` for every i, where a page is one contiguous span of each pool
(docs/kv-layout.md). The pools are viewed as 32-bit words, so the kernel moves bytes whatever the
dtype. One program copies `BLOCK` words of one page: every byte is read once and written once,
where a gather into a staging buffer and a scatter out of it would move it twice. The destination
may be another process's pool mapped through CUDA IPC (kvtransfer/cuda_ipc_*) on the same GPU;
the kernel runs on the source pool's device."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.arguments import INDEX_DTYPES, KernelArgumentError, check_tensor, use_triton_for

WORDS_PER_PROGRAM = 4096          # 16 KiB per program: a 2 MiB page is 128 programs


def copy_pages_ref(src: torch.Tensor, src_ids: torch.Tensor, dst: torch.Tensor,
                   dst_ids: torch.Tensor) -> None:
    """The specification: src and dst are [num_blocks, page_words] views of two pools (any dtype
    of one element size), ids int32/int64 [num_pages]. Writes dst in place."""
    dst.index_copy_(0, dst_ids.to(device=dst.device, dtype=torch.int64),
                    src.index_select(0, src_ids.to(device=src.device, dtype=torch.int64)).to(dst.device))


@triton.jit
def _page_copy_kernel(src_ptr, dst_ptr, src_ids_ptr, dst_ids_ptr, page_words,
                      BLOCK: tl.constexpr):
    page = tl.program_id(0)
    part = tl.program_id(1)
    s = tl.load(src_ids_ptr + page).to(tl.int64)
    d = tl.load(dst_ids_ptr + page).to(tl.int64)
    offs = part.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < page_words
    words = tl.load(src_ptr + s * page_words + offs, mask=mask)
    tl.store(dst_ptr + d * page_words + offs, words, mask=mask)


def page_words(pool: torch.Tensor) -> torch.Tensor:
    """A contiguous pool as [num_blocks, words] of int32 (int16 when a page's bytes are not a
    multiple of 4): the view the copy and the checksums work on."""
    if not pool.is_contiguous():
        raise KernelArgumentError("pool", "must be contiguous (page-major, docs/kv-layout.md)")
    flat = pool.reshape(pool.shape[0], -1)
    page_bytes = flat.shape[1] * pool.element_size()
    word = torch.int32 if page_bytes % 4 == 0 else torch.int16
    return flat.view(torch.uint8).view(word) if pool.element_size() == 1 else flat.view(word)


def _check(src, src_ids, dst, dst_ids) -> None:
    check_tensor("src", src, 2, inner_contiguous=2)
    check_tensor("dst", dst, 2, (src.dtype,), inner_contiguous=2)
    if src.shape[1] != dst.shape[1]:
        raise KernelArgumentError("dst", f"pages of {dst.shape[1]} words, src has {src.shape[1]}")
    check_tensor("src_ids", src_ids, 1, INDEX_DTYPES)
    check_tensor("dst_ids", dst_ids, 1, INDEX_DTYPES)
    if src_ids.shape != dst_ids.shape:
        raise KernelArgumentError("dst_ids", f"{dst_ids.shape[0]} ids for {src_ids.shape[0]} pages")
    if src_ids.device != src.device or dst_ids.device != src.device:
        raise KernelArgumentError("src_ids", f"ids must be on the source device {src.device}")


def copy_pages(src: torch.Tensor, src_ids: torch.Tensor, dst: torch.Tensor, dst_ids: torch.Tensor,
               *, use_triton: bool | None = None) -> None:
    """As copy_pages_ref, in one launch on src's device (dst may be mapped from another process
    on that device). The ids must be in range: a page id is not bounds-checked on device."""
    _check(src, src_ids, dst, dst_ids)
    if not use_triton_for(use_triton, src):
        copy_pages_ref(src, src_ids, dst, dst_ids)
        return
    num_pages, words = src_ids.shape[0], src.shape[1]
    if num_pages == 0:
        return
    grid = (num_pages, triton.cdiv(words, WORDS_PER_PROGRAM))
    with torch.cuda.device(src.device) if src.is_cuda else _nothing():
        _page_copy_kernel[grid](src, dst, src_ids, dst_ids, words, BLOCK=WORDS_PER_PROGRAM,
                                num_warps=8)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
