"""The page-copy kernel (Triton's interpreter, small odd shapes) against its reference, and the
per-page device checksum: equal pages agree, any damage a transfer can do is seen."""

from __future__ import annotations

import pytest
import torch

from kernels.arguments import KernelArgumentError
from services.kvtransfer.device_checksum import checksums_of, page_checksums
from tests.unit.kernel_interpreter import interpreted

MODULES = ("kernels.page_copy",)


@pytest.fixture(scope="module")
def page_copy():
    with interpreted(*MODULES) as (module,):
        yield module


@pytest.mark.parametrize("dtype, page_shape", [
    (torch.bfloat16, (3, 2, 4, 2, 8)),          # 768 bytes a page: 192 int32 words
    (torch.float32, (1, 2, 3, 1, 5)),           # 30 words
    (torch.float16, (1, 2, 1, 1, 3)),           # 12 bytes: 3 words
    (torch.float16, (1, 2, 1, 1, 4099)),        # more words than one program copies
])
def test_kernel_matches_reference(page_copy, dtype, page_shape) -> None:
    src = torch.randn((9, *page_shape)).to(dtype)
    dst = torch.randn((11, *page_shape)).to(dtype)
    expected = dst.clone()
    src_ids, dst_ids = [4, 0, 8, 5, 1], [10, 3, 0, 7, 6]
    page_copy.copy_pages_ref(page_copy.page_words(src), torch.tensor(src_ids),
                             page_copy.page_words(expected), torch.tensor(dst_ids))
    page_copy.copy_pages(page_copy.page_words(src), torch.tensor(src_ids, dtype=torch.int32),
                         page_copy.page_words(dst), torch.tensor(dst_ids), use_triton=True)
    assert torch.equal(dst.view(torch.uint8), expected.view(torch.uint8))
    for s, d in zip(src_ids, dst_ids):
        assert torch.equal(dst[d].view(torch.uint8), src[s].view(torch.uint8))
    untouched = [b for b in range(11) if b not in dst_ids]
    assert torch.equal(dst[untouched], expected[untouched])


def test_wrapper_rejects_bad_arguments(page_copy) -> None:
    words = page_copy.page_words(torch.zeros((4, 2, 8)))
    with pytest.raises(KernelArgumentError, match="dst"):
        page_copy.copy_pages(words, torch.tensor([0]), torch.zeros((4, 3), dtype=torch.int32),
                             torch.tensor([0]))
    with pytest.raises(KernelArgumentError, match="dst_ids"):
        page_copy.copy_pages(words, torch.tensor([0, 1]), words.clone(), torch.tensor([0]))
    with pytest.raises(KernelArgumentError, match="src_ids"):
        page_copy.copy_pages(words, torch.tensor([0.0]), words.clone(), torch.tensor([0]))
    with pytest.raises(KernelArgumentError, match="contiguous"):
        page_copy.page_words(torch.zeros((4, 8, 2)).transpose(1, 2))


def test_checksums_agree_on_equal_pages_and_see_damage() -> None:
    pool = torch.randn((5, 2, 2, 16, 2, 32)).to(torch.bfloat16)
    same = pool.clone()
    assert page_checksums(pool, [3, 1, 4]) == page_checksums(same, [3, 1, 4])
    assert page_checksums(pool, []) == []
    base = page_checksums(pool, range(5))
    assert len(set(base)) == 5
    words = same.reshape(5, -1).view(torch.int32)
    words[2, 5] += 1                                   # one word changed
    words[3, words.shape[1] // 3:] = 0                 # a truncated page (zero tail)
    a, b = words[4, 0].clone(), words[4, 1].clone()    # two words swapped within a page
    words[4, 0], words[4, 1] = b, a
    got = page_checksums(same, range(5))
    assert got[:2] == base[:2]
    assert got[2] != base[2] and got[3] != base[3] and got[4] != base[4]


def test_checksums_of_odd_page_sizes_and_int16_words() -> None:
    pages = torch.arange(3 * 14, dtype=torch.int16).reshape(3, 14)
    sums = checksums_of(pages)
    assert sums == checksums_of(pages.clone()) and len(set(sums)) == 3
    pages[1, 13] = 0
    assert checksums_of(pages)[1] != sums[1]


def test_checksums_in_groups_equal_checksums_at_once(monkeypatch) -> None:
    from services.kvtransfer import device_checksum
    pool = torch.randn((9, 2, 2, 4, 2, 8))
    ids = [3, 4, 5, 0, 8, 2, 1]                  # a run, then scattered blocks
    at_once = device_checksum.checksums_of(pool.reshape(9, -1).view(torch.int32)[ids])
    monkeypatch.setattr(device_checksum, "GROUP_BYTES", 2 * pool[0].numel() * 4)   # 2 pages
    assert device_checksum.page_checksums(pool, ids) == at_once
