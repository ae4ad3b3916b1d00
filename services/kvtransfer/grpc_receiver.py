"""Receiving pages over gRPC: the server side of `KVTransfer.PushPages`, landing each stream's
stripe through a decode worker's KVReceiver. The same server answers the CUDA IPC control calls
(cuda_ipc_receiver.py).

It runs on a synchronous gRPC server of its own (a thread per stream), beside the worker's
asyncio server: the work per byte (checksum, copy into the pool) releases the GIL, so parallel
stripes land in parallel, and a large transfer never stalls the worker's event loop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from services.engine.errors import ConfigError, KVTransferError
from services.kvtransfer import frames
from services.kvtransfer.cuda_ipc_receiver import CudaIpcLanding
from services.kvtransfer.inbox import KVReceiver, PageChecker, PageInbox
from services.kvtransfer.grpc_sender import channel_options
from services.kvtransfer.transport import TransferConfig
from services.rpc.tandem.v1 import worker_pb2
from services.security.cluster_token import server_interceptors


class KVTransferService:
    def __init__(self, receiver: KVReceiver) -> None:
        self._receiver = receiver

    def add_to_server(self, server: grpc.Server) -> None:
        handler = grpc.stream_unary_rpc_method_handler(
            self.push_pages, request_deserializer=frames.kvchunk_frame,
            response_serializer=worker_pb2.PushAck.SerializeToString)
        ipc = CudaIpcLanding(self._receiver)
        unary = grpc.unary_unary_rpc_method_handler
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("tandem.v1.KVTransfer", {
            "PushPages": handler,
            "ExportPool": unary(ipc.export_pool, worker_pb2.KVPoolRequest.FromString,
                                worker_pb2.KVPoolExport.SerializeToString),
            "BeginWrite": unary(ipc.begin_write, worker_pb2.BeginWriteRequest.FromString,
                                worker_pb2.PushAck.SerializeToString),
            "EndWrite": unary(ipc.end_write, worker_pb2.EndWriteRequest.FromString,
                              worker_pb2.PushAck.SerializeToString)})])

    def push_pages(self, frames_in, context) -> worker_pb2.PushAck:
        inbox = None
        try:
            first = frames.decode_frame(next(frames_in))
            if first["kind"] != "header":
                raise KVTransferError(f"first frame is {first['kind']!r}, not a header")
            header = frames.header_fields(first)
            inbox = self._receiver.inbox(header.request_id)
            inbox.open(header.layout, header.first_page, header.num_pages, header.total_pages,
                       header.num_tokens, header.block_ids)
            checker = PageChecker(header.layout.page_bytes, header.num_pages, header.checksum)
            for raw in frames_in:
                msg = frames.decode_frame(raw)
                if msg["kind"] == "data":
                    self._land(inbox, checker, header.first_page, msg)
                elif msg["kind"] == "end":
                    checker.verify(msg.get("checksums", []), msg.get("total_bytes", -1))
                    landed = inbox.finish(header.first_page, header.num_pages)
                    self._receiver.count_landed(landed)
                    return worker_pb2.PushAck(ok=True, bytes_received=landed)
                else:
                    raise KVTransferError("a second header frame in one stream")
            raise KVTransferError(f"stream ended after {checker.received} of "
                                  f"{checker.total_bytes} bytes, without an end frame")
        except StopIteration:
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
    def _land(inbox: PageInbox, checker: PageChecker, first_page: int, msg: dict) -> None:
        offset = msg.get("offset")
        if not isinstance(offset, int):
            raise KVTransferError("data frame without an integer offset")
        for page, in_page, piece in checker.split(offset, msg["data"]):
            inbox.write(first_page + page, in_page, piece)


CONTROL_THREADS = 8


class KVTransferServer:
    """The KVTransfer endpoint of one decode worker: `start(host, port) -> bound port`, `stop()`."""

    def __init__(self, receiver: KVReceiver, config: TransferConfig) -> None:
        # Streams beyond max_concurrent_streams wait for a thread rather than being refused
        # (RESOURCE_EXHAUSTED would fail an admitted request); each sender bounds what it sends
        # at once to what lands at once. A few more threads keep the short control calls
        # (CUDA IPC) from waiting behind page streams.
        self._server = grpc.server(ThreadPoolExecutor(config.max_concurrent_streams + CONTROL_THREADS,
                                                      thread_name_prefix="kv-receive"),
                                   options=channel_options(config),
                                   interceptors=server_interceptors(config.cluster_token, sync=True))
        KVTransferService(receiver).add_to_server(self._server)

    def start(self, host: str, port: int) -> int:
        try:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise ConfigError(f"cannot listen on {host}:{port} for KV pages")
        self._server.start()
        return bound

    def stop(self, grace_s: float | None) -> None:
        self._server.stop(grace_s).wait()
