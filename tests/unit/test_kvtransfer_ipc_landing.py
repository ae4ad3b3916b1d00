"""The decode side of a CUDA IPC transfer, on CPU pools: BeginWrite checks the blocks against the
reservation and keeps them busy, EndWrite verifies lengths and per-page checksums before the pages
count as landed; a corrupted, truncated or failed write is rejected and the inbox closed (its
owner then frees the reservation); a reservation closed mid-write keeps its blocks busy until the
writer is done. The writes themselves are what the prefill worker's kernel does: page copies."""

from __future__ import annotations

import pytest
import torch

from kernels.page_copy import copy_pages, page_words
from services.engine.errors import KVTransferError
from services.kvtransfer import KVReceiver
from services.kvtransfer.cuda_ipc_receiver import CudaIpcLanding
from services.kvtransfer.device_checksum import page_checksums
from services.kvtransfer.pages import PageLayout
from services.rpc.tandem.v1 import worker_pb2

PAGE_SHAPE = (3, 2, 4, 2, 8)
BLOCK = PAGE_SHAPE[2]


@pytest.fixture
def landing():
    failed: list[str] = []
    receiver = KVReceiver(torch.zeros((10, *PAGE_SHAPE), dtype=torch.bfloat16), BLOCK,
                          on_failed=failed.append)
    return receiver, CudaIpcLanding(receiver), failed


def _begin(landing: CudaIpcLanding, rid: str, block_ids, num_tokens: int, layout=None):
    layout = layout or PageLayout("bfloat16", PAGE_SHAPE)
    return landing.begin_write(worker_pb2.BeginWriteRequest(
        request_id=rid, block_ids=block_ids, num_tokens=num_tokens, dtype=layout.dtype,
        page_shape=list(layout.page_shape)), None)


def _write(receiver: KVReceiver, src: torch.Tensor, src_ids, dst_ids) -> None:
    copy_pages(page_words(src), torch.tensor(src_ids), page_words(receiver.kv_cache),
               torch.tensor(dst_ids))


def _end(landing: CudaIpcLanding, rid: str, sums, num_bytes: int, ok: bool = True):
    return landing.end_write(worker_pb2.EndWriteRequest(
        request_id=rid, ok=ok, checksums=sums, num_bytes=num_bytes, error="" if ok else "boom"), None)


def _source() -> torch.Tensor:
    return torch.randn((6, *PAGE_SHAPE)).to(torch.bfloat16)


def test_pages_written_and_verified_land_bit_exact(landing) -> None:
    receiver, ipc, failed = landing
    inbox = receiver.expect("ok", [7, 2, 9])
    src = _source()
    assert _begin(ipc, "ok", [7, 2, 9], 3 * BLOCK - 1).ok
    assert not inbox.idle
    _write(receiver, src, [4, 0, 5], [7, 2, 9])
    ack = _end(ipc, "ok", page_checksums(src, [4, 0, 5]), 3 * inbox.layout.page_bytes)
    assert ack.ok and ack.bytes_received == 3 * inbox.layout.page_bytes
    assert inbox.landed.result(timeout=1) == 3 * BLOCK - 1 and inbox.idle
    for s, d in zip([4, 0, 5], [7, 2, 9]):
        assert torch.equal(receiver.kv_cache[d].view(torch.int16), src[s].view(torch.int16))
    assert receiver.bytes_received == ack.bytes_received and not failed


@pytest.mark.parametrize("damage", ["flip_one_word", "truncate_last_page", "swap_pages"])
def test_a_corrupted_or_truncated_write_is_detected(landing, damage) -> None:
    receiver, ipc, failed = landing
    inbox = receiver.expect("bad", [1, 3])
    src = _source()
    assert _begin(ipc, "bad", [1, 3], 2 * BLOCK).ok
    _write(receiver, src, [2, 3], [1, 3])
    words = page_words(receiver.kv_cache)
    if damage == "flip_one_word":
        words[3, 17] ^= 1
    elif damage == "truncate_last_page":
        words[3, words.shape[1] // 2:] = 0
    else:
        _write(receiver, src, [3, 2], [1, 3])
    ack = _end(ipc, "bad", page_checksums(src, [2, 3]), 2 * inbox.layout.page_bytes)
    assert not ack.ok and "checksum mismatch" in ack.error
    with pytest.raises(KVTransferError, match="checksum mismatch"):
        inbox.landed.result(timeout=1)
    assert failed == ["bad"] and inbox.idle


def test_wrong_lengths_a_failed_writer_and_a_mismatched_reservation_are_rejected(landing) -> None:
    receiver, ipc, failed = landing
    inbox = receiver.expect("short", [0, 1])
    assert _begin(ipc, "short", [0, 1], 2 * BLOCK).ok
    ack = _end(ipc, "short", [], inbox.layout.page_bytes)           # one page's bytes of two
    assert not ack.ok and "truncated" in ack.error
    receiver.expect("failed", [2])
    assert _begin(ipc, "failed", [2], 1).ok
    assert "the writer failed: boom" in _end(ipc, "failed", [], 0, ok=False).error
    receiver.expect("other", [4, 5])
    assert "do not match the reservation" in _begin(ipc, "other", [5, 4], 2 * BLOCK).error
    receiver.expect("layout", [6])
    assert "layout" in _begin(ipc, "layout", [6], 1, PageLayout("float16", PAGE_SHAPE)).error
    assert "no reservation" in _begin(ipc, "nobody", [8], 1).error
    receiver.expect("twice", [7])
    assert _begin(ipc, "twice", [7], 1).ok
    assert "already active" in _begin(ipc, "twice", [7], 1).error
    assert failed == ["short", "failed", "other", "layout"]


def test_a_reservation_closed_mid_write_stays_busy_until_the_writer_is_done(landing) -> None:
    receiver, ipc, failed = landing
    inbox = receiver.expect("late", [5])
    src = _source()
    assert _begin(ipc, "late", [5], BLOCK).ok
    receiver.discard("late")                  # cancelled or expired while the copy runs
    assert not inbox.idle and not inbox.wait_idle(0.01)
    _write(receiver, src, [0], [5])
    ack = _end(ipc, "late", page_checksums(src, [0]), inbox.layout.page_bytes)
    assert not ack.ok and "closed" in ack.error
    assert inbox.idle                          # now the blocks may go to another request
    with pytest.raises(KVTransferError):
        inbox.landed.result(timeout=1)
    assert "no write in progress" in _end(ipc, "late", [], 0).error
