"""Many transfers at once into one receiver that lands only a few at a time: none is refused
(the sender holds back what the receiver cannot take now, the receiver queues the rest), so a
burst of finished prefills never fails an admitted request."""

from __future__ import annotations

import asyncio

import pytest
import torch

from services.kvtransfer import KVReceiver, KVTransferServer, KVTransports, PageRun, TransferConfig

PAGE_SHAPE = (2, 2, 4, 2, 8)
BLOCK = PAGE_SHAPE[2]
NARROW = TransferConfig(chunk_bytes=64 * 2**10, streams=2, min_stripe_bytes=1, max_concurrent_streams=2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("senders", [1, 3], ids=["one-sender", "three-senders"])
async def test_a_burst_of_transfers_beyond_the_receivers_width_all_land(senders) -> None:
    transfers = 24
    receiver = KVReceiver(torch.zeros((2 * transfers, *PAGE_SHAPE)), BLOCK)
    server = KVTransferServer(receiver, NARROW)
    address = f"127.0.0.1:{server.start('127.0.0.1', 0)}"
    groups = [KVTransports(NARROW) for _ in range(senders)]
    src = torch.randn((2, *PAGE_SHAPE))
    try:
        inboxes = [receiver.expect(f"b{i}", [2 * i, 2 * i + 1]) for i in range(transfers)]
        await asyncio.gather(*(
            groups[i % senders].sender_for(address, "grpc").send_pages(
                PageRun(f"b{i}", src, (0, 1), 2 * BLOCK, dst_block_ids=(2 * i, 2 * i + 1)))
            for i in range(transfers)))
        assert [inbox.landed.result(timeout=5) for inbox in inboxes] == [2 * BLOCK] * transfers
        assert torch.equal(receiver.kv_cache, src.repeat(transfers, 1, 1, 1, 1, 1))
    finally:
        for group in groups:
            await group.close()
        server.stop(None)
