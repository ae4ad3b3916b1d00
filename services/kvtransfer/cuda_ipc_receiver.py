"""Receiving pages through CUDA IPC: the decode side's control calls on its KVTransfer server.

    ExportPool  once per peer: the pool's IPC description (cuda_ipc_pool.export_pool)
    BeginWrite  per transfer: the reserved blocks, checked against the reservation, become busy
                (not freed, whatever happens, until EndWrite or the write timeout)
    EndWrite    per transfer, after the writer's copy has completed on its GPU: lengths and,
                when sent, per-page checksums are verified on this GPU before the pages count as
                landed; a mismatch rejects the transfer, so the request is prefilled again and
                never decoded from bad K/V

The bytes themselves never pass here: the prefill worker wrote them into the pool."""

from __future__ import annotations

import logging
import threading

from services.engine.errors import KVTransferError
from services.kvtransfer import cuda_ipc_pool
from services.kvtransfer.device_checksum import page_checksums
from services.kvtransfer.inbox import KVReceiver, PageInbox
from services.kvtransfer.pages import PageLayout
from services.rpc.tandem.v1 import worker_pb2

log = logging.getLogger("tandem.kvtransfer")


class CudaIpcLanding:
    def __init__(self, receiver: KVReceiver) -> None:
        self._receiver = receiver
        # Writes begun and not ended, by request id: an inbox discarded meanwhile (cancelled,
        # expired) is still reached by its EndWrite, which is what makes its blocks free.
        self._writing: dict[str, PageInbox] = {}
        self._lock = threading.Lock()

    def export_pool(self, request: worker_pb2.KVPoolRequest, context) -> worker_pb2.KVPoolExport:
        try:
            return cuda_ipc_pool.export_pool(self._receiver.kv_cache)
        except Exception as exc:          # a driver that refuses IPC: the peer falls back to grpc
            log.warning("cannot export the KV pool through CUDA IPC: %s", exc)
            return worker_pb2.KVPoolExport(available=False, node_id=cuda_ipc_pool.node_id(),
                                           reason=f"export failed: {exc}")

    def begin_write(self, request: worker_pb2.BeginWriteRequest, context) -> worker_pb2.PushAck:
        try:
            if not request.block_ids:
                raise KVTransferError(f"request {request.request_id}: cuda_ipc needs the block ids")
            inbox = self._receiver.inbox(request.request_id)
            layout = PageLayout(request.dtype, tuple(request.page_shape))
            with self._lock:
                if request.request_id in self._writing:
                    raise KVTransferError(f"request {request.request_id}: a write is already active")
                inbox.begin_remote_write(layout, len(request.block_ids), request.num_tokens,
                                         tuple(request.block_ids))
                self._writing[request.request_id] = inbox
        except KVTransferError as exc:
            return worker_pb2.PushAck(ok=False, error=str(exc))
        return worker_pb2.PushAck(ok=True)

    def end_write(self, request: worker_pb2.EndWriteRequest, context) -> worker_pb2.PushAck:
        rid = request.request_id
        with self._lock:
            inbox = self._writing.pop(rid, None)
        if inbox is None:
            return worker_pb2.PushAck(ok=False, error=f"request {rid}: no write in progress")
        try:
            if not request.ok:
                raise KVTransferError(f"request {rid}: the writer failed: {request.error}")
            num_pages = inbox.total_pages
            expected = num_pages * inbox.layout.page_bytes
            if request.num_bytes != expected:
                raise KVTransferError(f"request {rid}: truncated: the writer reports "
                                      f"{request.num_bytes} bytes, {num_pages} pages are {expected}")
            if request.checksums:
                if len(request.checksums) != num_pages:
                    raise KVTransferError(f"request {rid}: {len(request.checksums)} checksums for "
                                          f"{num_pages} pages")
                got = page_checksums(self._receiver.kv_cache, inbox.block_ids[:num_pages])
                bad = [i for i, (g, w) in enumerate(zip(got, request.checksums)) if g != w]
                if bad:
                    raise KVTransferError(f"request {rid}: checksum mismatch on pages {bad}")
            landed = inbox.finish(0, num_pages)
        except KVTransferError as exc:
            inbox.close(exc)
            inbox.end_remote_write()
            return worker_pb2.PushAck(ok=False, error=str(exc))
        inbox.end_remote_write()
        self._receiver.count_landed(landed)
        return worker_pb2.PushAck(ok=True, bytes_received=landed)
