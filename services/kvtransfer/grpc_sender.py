"""Sending pages over gRPC: `KVTransfer.PushPages`, a client stream of msgpack frames (frames.py).

A transfer is split into stripes sent on parallel streams, one connection each (a single Python
gRPC stream tops out near 1.5-2 GB/s; several reach the network's and the receiver's rate).
Flow control is gRPC's own HTTP/2 window plus a bounded queue per stream: an encoder thread runs
at most `max_inflight_chunks` chunks ahead of the wire, so memory stays bounded whatever the
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
from services.kvtransfer.pages import PageRun, host_pages, page_bytes_view, stripes
from services.kvtransfer.transport import KVSender, TransferConfig, TransferReceipt
from services.rpc.tandem.v1 import worker_pb2
from services.security.cluster_token import sync_channel

PUSH_PAGES = "/tandem.v1.KVTransfer/PushPages"
_MAX_HTTP2_FRAME = 2**24 - 1        # the largest frame HTTP/2 allows


def channel_options(config: TransferConfig) -> list[tuple[str, int]]:
    """Both ends: messages of a chunk; a flow-control window and HTTP/2 frames large enough that
    a chunk streams without waiting for window updates or being cut into 16 KiB frames."""
    return [("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.http2.lookahead_bytes", config.window_bytes),
            ("grpc.http2.max_frame_size", _MAX_HTTP2_FRAME)]


def _identity(wire: bytes) -> bytes:
    return wire


class _StripeEncoder:
    """Encodes one stripe into KVChunk wire messages in a thread, at most max_inflight ahead."""

    _DONE = object()

    def __init__(self, run: PageRun, stripe: range, config: TransferConfig) -> None:
        self._run, self._stripe, self._config = run, stripe, config
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_inflight_chunks)
        self._stopped = threading.Event()
        threading.Thread(target=self._encode, name=f"kv-encode-{run.request_id}", daemon=True).start()

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
            run, chunk_bytes = self._run, self._config.chunk_bytes
            pool, ids = host_pages(run.kv_cache, run.block_ids[self._stripe.start:self._stripe.stop])
            if not self._put(frames.encode_header(run, self._stripe)):
                return
            sums, offset, pieces, size = [], 0, [], 0
            for block_id in ids:
                page = page_bytes_view(pool, block_id)
                sums.append(checksums.digest(checksums.DEFAULT, page))
                pos = 0
                while pos < len(page):
                    take = min(len(page) - pos, chunk_bytes - size)
                    pieces.append(page[pos:pos + take])
                    pos, size = pos + take, size + take
                    if size == chunk_bytes:
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
    """Pushes pages to one decode worker's KVTransfer service over `config.streams` connections.
    Each stream runs in a worker thread (the sync stub streams from its encoder), so the caller's
    event loop stays free."""

    name = "grpc"

    def __init__(self, address: str, config: TransferConfig) -> None:
        self.address = address
        self._config = config
        # A local subchannel pool gives each channel its own connection (otherwise channels with
        # the same target and arguments share one).
        options = channel_options(config) + [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [sync_channel(grpc.insecure_channel(address, options=options), config.cluster_token)
                          for _ in range(config.streams)]
        self._push = [ch.stream_unary(PUSH_PAGES, request_serializer=_identity,
                                      response_deserializer=worker_pb2.PushAck.FromString)
                      for ch in self._channels]
        self._slots = asyncio.Semaphore(max(1, config.max_concurrent_streams // config.streams))

    async def send_pages(self, run: PageRun) -> TransferReceipt:
        # Beyond what the receiver lands at once, transfers wait here, not in its queue.
        async with self._slots:
            return await self._send(run)

    async def _send(self, run: PageRun) -> TransferReceipt:
        start = time.perf_counter()
        parts = stripes(len(run.block_ids), run.layout.page_bytes, self._config.streams,
                        self._config.min_stripe_bytes)
        calls, encoders = [], []
        for stream, stripe in enumerate(parts):
            encoder, call = self.start_stripe(run, stripe, stream)
            encoders.append(encoder)
            calls.append(call)
        try:
            acks = await asyncio.gather(*(asyncio.to_thread(self._result, call, run) for call in calls))
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        finally:
            for encoder in encoders:
                encoder.stop()
        received = sum(ack.bytes_received for ack in acks)
        if received != run.num_bytes:
            raise KVTransferError(f"request {run.request_id}: {received} bytes acknowledged, "
                                  f"{run.num_bytes} sent")
        return TransferReceipt(len(run.block_ids), run.num_bytes, time.perf_counter() - start)

    def start_stripe(self, run: PageRun, stripe: range, stream: int = 0):
        """Starts pushing one stripe of run's pages on one stream; returns (encoder, call).
        `self._result(call, run)` waits for its acknowledgement."""
        encoder = _StripeEncoder(run, stripe, self._config)
        return encoder, self._push[stream].future(iter(encoder), timeout=self._config.timeout_s)

    def _result(self, call, run: PageRun) -> worker_pb2.PushAck:
        try:
            ack = call.result()
        except grpc.RpcError as exc:
            raise KVTransferError(f"request {run.request_id}: push to {self.address} failed: "
                                  f"{exc.code().name} {exc.details()}") from None
        if not ack.ok:
            raise KVTransferError(f"request {run.request_id}: rejected by {self.address}: {ack.error}")
        return ack

    async def close(self) -> None:
        for channel in self._channels:
            channel.close()
