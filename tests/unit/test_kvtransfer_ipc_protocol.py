"""The CUDA IPC transfer protocol end to end on host pools: the real sender's BeginWrite, page
copy, checksums and EndWrite over real gRPC to a real KVTransfer server. Mapping a pool from
another process needs a GPU (tests/gpu/test_kvtransfer_cuda_ipc.py); here both pools live in this
process, so the decode side's pool is the very tensor the sender writes into."""

from __future__ import annotations

import pytest
import torch

from services.engine.errors import KVTransferError
from services.kvtransfer import KVReceiver, KVTransferServer, PageRun, TransferConfig
from services.kvtransfer.cuda_ipc_sender import CudaIpcKVSender, block_runs, dst_runs

PAGE_SHAPE = (2, 2, 4, 2, 8)
BLOCK = PAGE_SHAPE[2]


@pytest.fixture
async def pair():
    failed: list[str] = []
    receiver = KVReceiver(torch.zeros((12, *PAGE_SHAPE), dtype=torch.bfloat16), BLOCK,
                          on_failed=failed.append)
    server = KVTransferServer(receiver, TransferConfig())
    address = f"127.0.0.1:{server.start('127.0.0.1', 0)}"
    senders = []

    def sender(**config) -> CudaIpcKVSender:
        senders.append(CudaIpcKVSender(address, TransferConfig(**config)))
        return senders[-1]
    yield receiver, sender, failed
    for s in senders:
        await s.close()
    server.stop(None)


def _src() -> torch.Tensor:
    return torch.randn((6, *PAGE_SHAPE)).to(torch.bfloat16)


@pytest.mark.parametrize("checksums", [True, False])
async def test_pages_written_then_reported_land_bit_exact(pair, checksums) -> None:
    receiver, make, failed = pair
    src, sender = _src(), make(ipc_checksums=checksums)
    inbox = receiver.expect("w", [9, 3, 4])
    receipt = await sender.write_pages(PageRun("w", src, (5, 0, 1), 3 * BLOCK - 2,
                                               dst_block_ids=(9, 3, 4)), receiver.kv_cache)
    assert inbox.landed.result(timeout=1) == 3 * BLOCK - 2 and inbox.idle
    assert receipt.num_bytes == 3 * inbox.layout.page_bytes == receiver.bytes_received
    for s, d in zip((5, 0, 1), (9, 3, 4)):
        assert torch.equal(receiver.kv_cache[d].view(torch.int16), src[s].view(torch.int16))
    assert not failed


async def test_a_write_damaged_on_the_way_is_rejected_then_a_new_one_lands(pair) -> None:
    receiver, make, failed = pair
    src, sender = _src(), make()
    launch = sender._launch_copy

    def damaged(*args) -> None:
        launch(*args)
        receiver.kv_cache[7].view(-1).view(torch.int16)[3] ^= 4
    sender._launch_copy = damaged
    inbox = receiver.expect("d", [6, 7])
    with pytest.raises(KVTransferError, match=r"checksum mismatch on pages \[1\]"):
        await sender.write_pages(PageRun("d", src, (2, 3), 2 * BLOCK, dst_block_ids=(6, 7)),
                                 receiver.kv_cache)
    with pytest.raises(KVTransferError):
        inbox.landed.result(timeout=1)
    assert failed == ["d"] and inbox.idle
    sender._launch_copy = launch
    receiver.discard("d")
    again = receiver.expect("d2", [6, 7])
    await sender.write_pages(PageRun("d2", src, (2, 3), 2 * BLOCK, dst_block_ids=(6, 7)),
                             receiver.kv_cache)
    assert again.landed.result(timeout=1) == 2 * BLOCK


async def test_a_failing_copy_releases_the_blocks_and_says_why(pair) -> None:
    receiver, make, failed = pair
    src, sender = _src(), make()

    def broken(*args) -> None:
        raise RuntimeError("device lost")
    sender._launch_copy = broken
    inbox = receiver.expect("x", [0])
    with pytest.raises(KVTransferError, match="device lost"):
        await sender.write_pages(PageRun("x", src, (1,), BLOCK, dst_block_ids=(0,)), receiver.kv_cache)
    with pytest.raises(KVTransferError, match="the writer failed: copy failed: device lost"):
        inbox.landed.result(timeout=1)
    assert inbox.idle and failed == ["x"]


async def test_refused_before_any_write(pair) -> None:
    receiver, make, failed = pair
    src, sender = _src(), make()
    with pytest.raises(KVTransferError, match="needs the reserved block ids"):
        await sender.write_pages(PageRun("n", src, (1,), BLOCK), receiver.kv_cache)
    with pytest.raises(KVTransferError, match="outside the decode pool"):
        await sender.write_pages(PageRun("o", src, (1,), BLOCK, dst_block_ids=(12,)), receiver.kv_cache)
    with pytest.raises(KVTransferError, match="layout"):
        await sender.write_pages(PageRun("l", src.float(), (1,), BLOCK, dst_block_ids=(1,)),
                                 receiver.kv_cache)
    with pytest.raises(KVTransferError, match="no reservation"):
        await sender.write_pages(PageRun("u", src, (1,), BLOCK, dst_block_ids=(1,)), receiver.kv_cache)
    assert not receiver.kv_cache.any()          # nothing was written anywhere


def test_block_runs_coalesce_consecutive_pages() -> None:
    assert block_runs((4, 5, 6, 9, 1, 2), (10, 11, 12, 13, 0, 5)) == [
        (4, 10, 3), (9, 13, 1), (1, 0, 1), (2, 5, 1)]
    assert block_runs((), ()) == []
    assert dst_runs((7, 8, 9, 2, 3, 11)) == [(0, 7, 3), (3, 2, 2), (5, 11, 1)]


async def test_a_decode_worker_that_is_gone_is_a_transfer_error() -> None:
    import socket
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    sender = CudaIpcKVSender(address, TransferConfig(timeout_s=5))
    try:
        with pytest.raises(KVTransferError, match="BeginWrite to .* failed: UNAVAILABLE"):
            await sender.write_pages(PageRun("g", _src(), (1,), BLOCK, dst_block_ids=(1,)),
                                     torch.zeros((4, *PAGE_SHAPE), dtype=torch.bfloat16))
        with pytest.raises(KVTransferError, match="ExportPool to .* failed"):
            await sender.remote_pool()
    finally:
        await sender.close()
