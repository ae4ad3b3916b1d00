"""The local transport and the receiving side's checks, on plain page pools."""

from __future__ import annotations

import pytest
import torch

from services.engine.errors import InvalidRequestError, KVTransferError
from services.kvtransfer import KVReceiver, KVTransports, LocalEndpoints, PageRun
from services.kvtransfer.inbox import PageChecker

PAGE_SHAPE = (2, 2, 4, 2, 8)     # layers, K/V, block_size, kv heads, head dim
BLOCK_SIZE = PAGE_SHAPE[2]


def pool(num_blocks: int, dtype=torch.float32, fill: bool = True) -> torch.Tensor:
    t = torch.zeros((num_blocks, *PAGE_SHAPE), dtype=dtype)
    if fill:
        t.copy_(torch.randn(t.shape))
    return t


@pytest.fixture
def endpoint():
    failed: list[str] = []
    receiver = KVReceiver(pool(8, fill=False), BLOCK_SIZE, on_failed=failed.append)
    LocalEndpoints.register("local-test:1", receiver)
    yield receiver, failed
    LocalEndpoints.unregister("local-test:1")


@pytest.mark.timeout(10)
async def test_local_round_trip_is_bit_exact(endpoint) -> None:
    receiver, failed = endpoint
    src = pool(6)
    inbox = receiver.expect("r1", [5, 2, 7])
    sender = KVTransports().sender_for("local-test:1")
    assert sender.name == "local"
    receipt = await sender.send_pages(PageRun("r1", src, (1, 3), num_tokens=6))
    assert inbox.landed.result() == 6
    assert torch.equal(receiver.kv_cache[5], src[1]) and torch.equal(receiver.kv_cache[2], src[3])
    assert not receiver.kv_cache[7].any()
    assert receipt.num_bytes == 2 * src[0].numel() * 4 == receiver.bytes_received
    assert failed == []


@pytest.mark.timeout(10)
async def test_local_rejects_a_layout_mismatch_and_closes_the_inbox(endpoint) -> None:
    receiver, failed = endpoint
    inbox = receiver.expect("r2", [0, 1])
    sender = KVTransports().sender_for("local-test:1", "local")
    with pytest.raises(KVTransferError, match="layout"):
        await sender.send_pages(PageRun("r2", pool(4, dtype=torch.float16), (0,), num_tokens=3))
    with pytest.raises(KVTransferError):
        inbox.landed.result()
    assert failed == ["r2"]


@pytest.mark.timeout(10)
async def test_too_many_tokens_for_the_pages_is_rejected(endpoint) -> None:
    receiver, failed = endpoint
    receiver.expect("r3", [0, 1])
    sender = KVTransports().sender_for("local-test:1")
    with pytest.raises(KVTransferError, match="num_tokens"):
        await sender.send_pages(PageRun("r3", pool(4), (0,), num_tokens=BLOCK_SIZE + 1))
    assert failed == ["r3"]


def test_factory_validates_its_inputs() -> None:
    transports = KVTransports()
    with pytest.raises(InvalidRequestError, match="kv_address"):
        transports.sender_for("")
    with pytest.raises(InvalidRequestError, match="transport"):
        transports.sender_for("127.0.0.1:1", "carrier-pigeon")
    with pytest.raises(InvalidRequestError, match="transport"):
        transports.sender_for("nowhere:1", "local")
    assert transports.sender_for("127.0.0.1:1").name == "auto"      # grpc or cuda_ipc, decided on first use


@pytest.mark.parametrize("checksum", ["xxh3_64", "crc32"])
def test_checker_detects_gaps_overflow_truncation_and_corruption(checksum) -> None:
    data = bytes(range(256)) * 2             # two pages of 256 bytes
    good = PageChecker(256, 2, checksum)
    list(good.split(0, memoryview(data)))
    sums = good.digests
    with pytest.raises(KVTransferError, match="expected 0"):
        list(PageChecker(256, 2, checksum).split(10, memoryview(data[10:])))
    with pytest.raises(KVTransferError, match="beyond"):
        list(PageChecker(256, 2, checksum).split(0, memoryview(data + b"x")))
    short = PageChecker(256, 2, checksum)
    list(short.split(0, memoryview(data[:300])))
    with pytest.raises(KVTransferError, match="truncated"):
        short.verify(sums, 512)
    flipped = bytearray(data)
    flipped[300] ^= 0x01
    bad = PageChecker(256, 2, checksum)
    list(bad.split(0, memoryview(bytes(flipped))))
    with pytest.raises(KVTransferError, match=r"pages \[1\]"):
        bad.verify(sums, 512)
