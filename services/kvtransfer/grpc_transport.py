"""KV pages over gRPC: `KVTransfer.PushPages`, a client stream of msgpack frames (frames.py).

Flow control is gRPC's own HTTP/2 window plus a bounded queue of encoded chunks: an encoder
thread runs at most `max_inflight_chunks` ahead of the wire, so memory stays bounded whatever the
transfer size, and encoding (checksums, one copy) overlaps sending."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Iterator

import grpc

from services.engine.errors import KVTransferError
from services.kvtransfer import checksums, frames
from services.kvtransfer.inbox import KVReceiver, PageChecker
from services.kvtransfer.pages import PageRun, host_pages, page_bytes_view
from services.kvtransfer.transport import KVSender, TransferConfig, TransferReceipt
from services.rpc.tandem.v1 import worker_pb2

PUSH_PAGES = "/tandem.v1.KVTransfer/PushPages"


def channel_options(config: TransferConfig) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes)]


def _identity(wire: bytes) -> bytes:
    return wire


class _ChunkEncoder:
    """Encodes one transfer into KVChunk wire messages in a thread, at most max_inflight ahead."""

    _DONE = object()

    def __init__(self, run: PageRun, config: TransferConfig) -> None:
        self._run = run
        self._config = config
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_inflight_chunks)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._encode, name=f"kv-encode-{run.request_id}",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _encode(self) -> None:
        try:
            run = self._run
            pool, ids = host_pages(run.kv_cache, run.block_ids)
            if not self._put(frames.encode_header(run)):
                return
            sums, offset, pieces, size = [], 0, [], 0
            for block_id in ids:
                page = page_bytes_view(pool, block_id)
                sums.append(checksums.digest(checksums.DEFAULT, page))
                pos = 0
                while pos < len(page):
                    take = min(len(page) - pos, self._config.chunk_bytes - size)
                    pieces.append(page[pos:pos + take])
                    pos, size = pos + take, size + take
                    if size == self._config.chunk_bytes:
                        if not self._put(frames.encode_data(offset, pieces)):
                            return
                        offset, pieces, size = offset + size, [], 0
            if size and not self._put(frames.encode_data(offset, pieces)):
                return
            self._put(frames.encode_end(sums, offset + size))
        except BaseException as exc:  # surfaced to the caller through the stream
            self._put(exc)
        finally:
            self._put(self._DONE)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stopped.set()


class GrpcKVSender(KVSender):
    """Pushes pages to one decode worker's KVTransfer service. Each transfer runs in a worker
    thread (the sync stub streams from the encoder), so the caller's event loop stays free."""

    name = "grpc"

    def __init__(self, address: str, config: TransferConfig) -> None:
        self.address = address
        self._config = config
        self._channel = grpc.insecure_channel(address, options=channel_options(config))
        self._push = self._channel.stream_unary(
            PUSH_PAGES, request_serializer=_identity,
            response_deserializer=worker_pb2.PushAck.FromString)

    async def send_pages(self, run: PageRun) -> TransferReceipt:
        start = time.perf_counter()
        encoder = _ChunkEncoder(run, self._config)
        call = self._push.future(iter(encoder), timeout=self._config.timeout_s)
        try:
            ack = await asyncio.to_thread(call.result)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.RpcError as exc:
            raise KVTransferError(f"request {run.request_id}: push to {self.address} failed: "
                                  f"{exc.code().name} {exc.details()}") from None
        finally:
            encoder.stop()
        if not ack.ok:
            raise KVTransferError(f"request {run.request_id}: rejected by {self.address}: {ack.error}")
        if ack.bytes_received != run.num_bytes:
            raise KVTransferError(f"request {run.request_id}: {ack.bytes_received} bytes acknowledged, "
                                  f"{run.num_bytes} sent")
        return TransferReceipt(len(run.block_ids), run.num_bytes, time.perf_counter() - start)

    async def close(self) -> None:
        self._channel.close()


class KVTransferService:
    """The server side of PushPages, landing pages through a decode worker's KVReceiver.
    Add it to a grpc.aio server with `add_to_server`."""

    def __init__(self, receiver: KVReceiver) -> None:
        self._receiver = receiver

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_unary_rpc_method_handler(
            self.push_pages, request_deserializer=frames.kvchunk_frame,
            response_serializer=worker_pb2.PushAck.SerializeToString)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("tandem.v1.KVTransfer", {"PushPages": handler})])

    async def push_pages(self, frames_in, context) -> worker_pb2.PushAck:
        inbox = None
        try:
            first = frames.decode_frame(await anext(aiter(frames_in)))
            if first["kind"] != "header":
                raise KVTransferError(f"first frame is {first['kind']!r}, not a header")
            request_id, layout, num_pages, num_tokens, block_ids, checksum = frames.header_fields(first)
            inbox = self._receiver.inbox(request_id)
            inbox.open(layout, num_pages, num_tokens, block_ids)
            checker = PageChecker(layout.page_bytes, num_pages, checksum)
            async for raw in frames_in:
                msg = frames.decode_frame(raw)
                if msg["kind"] == "data":
                    await asyncio.to_thread(self._land, inbox, checker, msg)
                elif msg["kind"] == "end":
                    checker.verify(msg.get("checksums", []), msg.get("total_bytes", -1))
                    landed = inbox.finish()
                    self._receiver.count_landed(landed)
                    return worker_pb2.PushAck(ok=True, bytes_received=landed)
                else:
                    raise KVTransferError("a second header frame in one transfer")
            raise KVTransferError(f"stream ended after {checker.received} of "
                                  f"{checker.total_bytes} bytes, without an end frame")
        except StopAsyncIteration:
            return worker_pb2.PushAck(ok=False, error="empty stream")
        except KVTransferError as exc:
            if inbox is not None:
                inbox.close(exc)
            return worker_pb2.PushAck(ok=False, error=str(exc))
        except BaseException:
            # Client gone or the server stopping: nothing half-written may survive.
            if inbox is not None:
                inbox.close(KVTransferError(f"request {inbox.request_id}: transfer interrupted"))
            raise

    @staticmethod
    def _land(inbox, checker: PageChecker, msg: dict) -> None:
        data = msg.get("data")
        if not isinstance(data, (bytes, bytearray)):
            raise KVTransferError("data frame without bytes")
        for page, offset, piece in checker.split(int(msg.get("offset", -1)), memoryview(data)):
            inbox.write(page, offset, piece)
