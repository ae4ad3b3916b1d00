"""The gRPC transport on loopback: bit-exact round trips, and corrupted / truncated / malformed
transfers rejected with the inbox closed (its owner then frees the reserved blocks)."""

from __future__ import annotations

import grpc
import pytest
import torch

from services.engine.errors import KVTransferError
from services.kvtransfer import KVReceiver, KVTransferServer, KVTransports, PageRun, TransferConfig
from services.kvtransfer import checksums, frames
from services.kvtransfer.grpc_sender import PUSH_PAGES, channel_options
from services.kvtransfer.pages import page_bytes_view
from services.rpc.tandem.v1 import worker_pb2

CONFIG = TransferConfig(chunk_bytes=64 * 2**10)
STRIPED = TransferConfig(chunk_bytes=64 * 2**10, streams=3, min_stripe_bytes=1)


def pool(num_blocks: int, page_shape: tuple[int, ...], dtype: torch.dtype, fill: bool = True) -> torch.Tensor:
    t = torch.zeros((num_blocks, *page_shape), dtype=dtype)
    if fill:
        t.copy_(torch.randn(t.shape))
    return t


class Endpoint:
    def __init__(self, receiver: KVReceiver, address: str) -> None:
        self.receiver, self.address = receiver, address
        self.failed: list[str] = []


class Stoppable:
    def __init__(self, server: KVTransferServer) -> None:
        self.server = server

    async def stop(self, grace) -> None:
        self.server.stop(grace)


async def start_endpoint(page_shape, dtype, num_blocks=8) -> tuple[Stoppable, Endpoint]:
    endpoint = Endpoint(None, "")
    endpoint.receiver = KVReceiver(pool(num_blocks, page_shape, dtype, fill=False), page_shape[2],
                                   on_failed=endpoint.failed.append)
    server = KVTransferServer(endpoint.receiver, CONFIG)
    endpoint.address = f"127.0.0.1:{server.start('127.0.0.1', 0)}"
    return Stoppable(server), endpoint


@pytest.mark.timeout(20)
@pytest.mark.parametrize("config", [CONFIG, STRIPED], ids=["one-stream", "three-stripes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_shape", [(2, 2, 4, 2, 8),            # pages share a frame
                                        (4, 2, 16, 4, 64)])         # a page spans frames
async def test_grpc_round_trip_is_bit_exact(page_shape, dtype, config) -> None:
    server, endpoint = await start_endpoint(page_shape, dtype)
    transports = KVTransports(config)
    try:
        src = pool(6, page_shape, dtype)
        inbox = endpoint.receiver.expect("r1", [5, 2, 7, 0])
        receipt = await transports.sender_for(endpoint.address, "grpc").send_pages(
            PageRun("r1", src, (4, 1, 3), num_tokens=3 * page_shape[2], dst_block_ids=(5, 2, 7, 0)))
        assert inbox.landed.result(timeout=1) == 3 * page_shape[2]
        for dst, s in ((5, 4), (2, 1), (7, 3)):
            assert torch.equal(endpoint.receiver.kv_cache[dst].view(torch.uint8),
                               src[s].view(torch.uint8))
        assert not endpoint.receiver.kv_cache[0].view(torch.uint8).any()
        assert receipt.num_bytes == endpoint.receiver.bytes_received == 3 * src[0].numel() * src.itemsize
        assert endpoint.failed == []
    finally:
        await transports.close()
        await server.stop(None)


def wire_frames(src: torch.Tensor, request_id: str, block_ids, num_tokens: int,
                checksum: str = checksums.DEFAULT) -> list[bytes]:
    run = PageRun(request_id, src, tuple(block_ids), num_tokens)
    pages = [page_bytes_view(src, b) for b in block_ids]
    out, offset = [frames.encode_header(run, checksum=checksum)], 0
    for p in pages:
        out.append(frames.encode_data(offset, [p]))
        offset += len(p)
    out.append(frames.encode_end([checksums.digest(checksum, p) for p in pages], offset))
    return out


async def push_raw(address: str, messages: list[bytes]) -> worker_pb2.PushAck:
    async with grpc.aio.insecure_channel(address, options=channel_options(CONFIG)) as channel:
        push = channel.stream_unary(PUSH_PAGES, request_serializer=lambda b: b,
                                    response_deserializer=worker_pb2.PushAck.FromString)
        return await push(iter(messages))


def flip_last_payload_byte(message: bytes) -> bytes:
    corrupted = bytearray(message)
    corrupted[-1] ^= 0x40
    return bytes(corrupted)


@pytest.mark.timeout(20)
async def test_a_crc32_transfer_lands_too() -> None:
    page_shape = (2, 2, 4, 2, 8)
    server, endpoint = await start_endpoint(page_shape, torch.float32)
    try:
        src = pool(4, page_shape, torch.float32)
        inbox = endpoint.receiver.expect("crc", [3, 1])
        ack = await push_raw(endpoint.address, wire_frames(src, "crc", [0, 2], 8, "crc32"))
        assert ack.ok and inbox.landed.result(timeout=1) == 8
        assert torch.equal(endpoint.receiver.kv_cache[1], src[2])
    finally:
        await server.stop(None)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("damage, error", [
    ("flip", "checksum mismatch on pages [1]"),
    ("drop_data", "truncated"),
    ("drop_end", "without an end frame"),
    ("garbage", "malformed frame"),
    ("short_payload", "announces"),
])
async def test_damaged_transfers_are_rejected_and_the_inbox_closed(damage, error) -> None:
    page_shape = (2, 2, 4, 2, 8)
    server, endpoint = await start_endpoint(page_shape, torch.float32)
    try:
        src = pool(4, page_shape, torch.float32)
        inbox = endpoint.receiver.expect("bad", [3, 1, 2])
        messages = wire_frames(src, "bad", [0, 2], num_tokens=8)
        if damage == "flip":
            messages[2] = flip_last_payload_byte(messages[2])
        elif damage == "drop_data":
            del messages[2]
        elif damage == "drop_end":
            del messages[-1]
        elif damage == "garbage":
            messages[1] = frames._as_kvchunk([b"\xc1\xc1"], 2)
        else:
            short = bytes(frames.kvchunk_frame(messages[1]))[:-10]
            messages[1] = frames._as_kvchunk([short], len(short))
        ack = await push_raw(endpoint.address, messages)
        assert not ack.ok and error in ack.error
        with pytest.raises(KVTransferError):
            inbox.landed.result(timeout=1)
        assert endpoint.failed == ["bad"]
        assert endpoint.receiver.bytes_received == 0
    finally:
        await server.stop(None)


@pytest.mark.timeout(20)
async def test_a_stripe_announced_twice_is_rejected() -> None:
    page_shape = (2, 2, 4, 2, 8)
    server, endpoint = await start_endpoint(page_shape, torch.float32)
    try:
        src = pool(4, page_shape, torch.float32)
        inbox = endpoint.receiver.expect("twice", [3, 1, 2])
        run = PageRun("twice", src, (0, 1), num_tokens=8)
        first = wire_frames(src, "twice", [0, 1], 8)
        first[0] = frames.encode_header(run, range(0, 2))
        assert (await push_raw(endpoint.address, first)).ok
        assert not inbox.landed.done() or inbox.landed.result() == 8
        again = await push_raw(endpoint.address, first)
        assert not again.ok and "not expecting" in again.error
    finally:
        await server.stop(None)


@pytest.mark.timeout(20)
async def test_a_transfer_for_an_unknown_request_or_a_closed_inbox_is_refused() -> None:
    page_shape = (2, 2, 4, 2, 8)
    server, endpoint = await start_endpoint(page_shape, torch.float32)
    transports = KVTransports(CONFIG)
    try:
        src = pool(2, page_shape, torch.float32)
        sender = transports.sender_for(endpoint.address, "grpc")
        with pytest.raises(KVTransferError, match="no reservation"):
            await sender.send_pages(PageRun("ghost", src, (0,), num_tokens=4))
        endpoint.receiver.expect("late", [0])
        endpoint.receiver.discard("late")
        with pytest.raises(KVTransferError, match="no reservation"):
            await sender.send_pages(PageRun("late", src, (0,), num_tokens=4))
    finally:
        await transports.close()
        await server.stop(None)


def test_kvchunk_wire_form_is_what_protobuf_reads() -> None:
    wire = frames.encode_end([1, 2, 3], 99)
    parsed = worker_pb2.KVChunk.FromString(wire)
    assert bytes(frames.kvchunk_frame(wire)) == parsed.frame
    assert frames.decode_frame(memoryview(parsed.frame)) == {"kind": "end", "total_bytes": 99,
                                                              "checksums": [1, 2, 3]}
