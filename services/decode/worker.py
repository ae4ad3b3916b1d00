"""DecodeWorker: reserves blocks for a request before its prefill starts (a lease its owner
renews while the request waits: Renew), lands its pages (on a gRPC server of its own at
`kv_address`: KVTransfer.PushPages, or the CUDA IPC calls after the prefill worker wrote them
into the pool; or a local copy), joins the request to the running batch and streams its
tokens (one Decode call per request, or many on one DecodeStream with their outputs batched).
With `prefill_here` it runs the whole request itself (colocated).

Lifecycle: `await start(host, port=0) -> "host:port"`, `await stop()`. Every path frees what it
holds: a finished or cancelled stream, a client that went away, a rejected transfer, an expired
reservation, an error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from services import wire
from services.decode.decode_mux import decode_stream
from services.decode.reservations import ReservationBook
from services.engine.engine import LLMEngine
from services.engine.engine_loop import EngineStoppedError, RequestStream
from services.engine.errors import CapacityError, InvalidRequestError, ReservationError
from services.engine.outputs import merged
from services.kvtransfer import KVReceiver, KVTransferServer, LocalEndpoints
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from services.worker.config import WorkerConfig
from services.worker.engine_host import exit_reporter, host_engine
from services.worker.edge import integrity_error, stream_edge, unary_edge
from services.worker.readiness import STOPPING, Readiness
from services.worker.server import start_server
from services.worker.startup import log_ready, warm_up
from services.worker.telemetry import WorkerTelemetry

log = logging.getLogger("tandem.decode")


class DecodeWorker(worker_pb2_grpc.DecodeWorkerServicer):
    def __init__(self, config: WorkerConfig, engine: LLMEngine | None = None) -> None:
        self.config = config
        self.worker_id = config.named("colocated" if config.colocated else "decode")
        self.engine = engine
        self.address: str | None = None
        self.kv_address: str | None = None
        self.loop = None            # EngineLoop, or EngineCoreClient (engine_process)
        self.telemetry: WorkerTelemetry | None = None
        self._kv_server: KVTransferServer | None = None
        self._server: grpc.aio.Server | None = None
        self.readiness = Readiness("tandem.v1.DecodeWorker")
        self._reaper: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str, port: int = 0) -> str:
        """Returns once ready: listening, and the engine warmed up (until then the server answers
        health checks NOT_SERVING and refuses every other call)."""
        started = time.perf_counter()
        aio_loop = asyncio.get_running_loop()
        hosted = await host_engine(self.config, self.worker_id, self.engine,
                                   needs_pages=not self.config.colocated,
                                   on_exit=exit_reporter(self.readiness, aio_loop))
        self.loop, self.engine, self.prompt_counter = hosted.loop, hosted.engine, hosted.prompt_counter
        load_s = time.perf_counter() - started
        self.telemetry = WorkerTelemetry("decode", self.engine, self.prompt_counter,
                                         lambda: self.reservations.num_reserved_blocks)
        self.loop.on_step = self.telemetry.on_step
        self.receiver = KVReceiver(self.engine.kv.kv_cache, self.engine.kv.block_size,
                                   on_failed=lambda rid: self._cancel_soon(aio_loop, rid))
        self.reservations = ReservationBook(self.loop, self.receiver, self.config.transfer.timeout_s)
        try:
            self.metrics_port = await self.telemetry.start(host, self.config.metrics_port)
            self._kv_server = KVTransferServer(self.receiver, self.config.transfer)
            kv_port = self._kv_server.start(host, self.config.kv_port)
            self._server, self.address = await start_server(
                lambda server: worker_pb2_grpc.add_DecodeWorkerServicer_to_server(self, server),
                host, port, self.config.transfer, self.readiness, self.config.advertise_host)
            warm_s = await warm_up(self.loop)
        except BaseException:
            await self.stop()
            raise
        self.kv_address = f"{self.address.rsplit(':', 1)[0]}:{kv_port}"
        LocalEndpoints.register(self.kv_address, self.receiver)
        self._reaper = asyncio.create_task(self.reservations.run_reaper(self.config.reaper_interval_s))
        await self.readiness.set_serving()
        log_ready(self.worker_id, f"{self.address} (KV pages on {self.kv_address})", self.engine,
                  self.config.engine.cache, load_s, warm_s)
        return self.address

    async def stop(self) -> None:
        """Stops serving and frees every reservation; also undoes a start that failed half-way.
        Idempotent."""
        await self.readiness.set_not_serving(STOPPING)
        if self.kv_address is not None:
            LocalEndpoints.unregister(self.kv_address)
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s)
        if self._kv_server is not None:
            await asyncio.to_thread(self._kv_server.stop, self.config.shutdown_grace_s)
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.loop is not None:
            with contextlib.suppress(EngineStoppedError):   # a dead engine process holds nothing
                await self.reservations.cancel_all()
            self.loop.stop()
        self._reaper = self._server = self._kv_server = self.loop = self.kv_address = None

    def _cancel_soon(self, aio_loop: asyncio.AbstractEventLoop, request_id: str) -> None:
        """A transfer was rejected (called from the transport's thread): free the reservation."""
        try:
            asyncio.run_coroutine_threadsafe(self.reservations.cancel(request_id), aio_loop)
        except RuntimeError:
            pass    # the worker is stopping; stop() frees every reservation

    # --- RPCs ------------------------------------------------------------------------------------
    @unary_edge
    async def Reserve(self, request: worker_pb2.ReserveRequest, context) -> worker_pb2.ReserveResponse:
        _require_id(request.request_id)
        if request.num_tokens < 1:
            raise InvalidRequestError("num_tokens", f"must be >= 1, got {request.num_tokens}")
        ttl_s = request.ttl_ms / 1000 if request.ttl_ms else self.config.reservation_ttl_s
        if ttl_s > self.config.max_reservation_ttl_s:
            raise InvalidRequestError("ttl_ms", f"must be <= {int(self.config.max_reservation_ttl_s * 1000)}, "
                                      f"got {request.ttl_ms}")
        reservation = await self.reservations.reserve(request.request_id, request.num_tokens, ttl_s)
        if reservation is None:
            self.telemetry.metrics.rejections.labels("kv_blocks").inc()
            return worker_pb2.ReserveResponse(
                granted=False, kv_address=self.kv_address,
                reason=f"{self.engine.kv.blocks_for(request.num_tokens)} blocks needed, "
                       f"{self.engine.kv.num_free_blocks} free")
        return worker_pb2.ReserveResponse(granted=True, num_blocks=len(reservation.block_ids),
                                          kv_address=self.kv_address, block_ids=reservation.block_ids)

    @unary_edge
    async def Renew(self, request: worker_pb2.RenewRequest, context) -> worker_pb2.RenewResponse:
        ttl_s = request.ttl_ms / 1000 if request.ttl_ms else self.config.reservation_ttl_s
        if ttl_s > self.config.max_reservation_ttl_s:
            raise InvalidRequestError("ttl_ms", f"must be <= {int(self.config.max_reservation_ttl_s * 1000)}, "
                                      f"got {request.ttl_ms}")
        missing = self.reservations.renew(request.request_ids, ttl_s)
        return worker_pb2.RenewResponse(missing_request_ids=missing)

    @stream_edge
    async def Decode(self, request: worker_pb2.DecodeRequest, context):
        _require_id(request.request_id)
        params = wire.sampling_from_proto(request.sampling if request.HasField("sampling") else None)
        if request.prefill_here:
            stream = await self._start_here(request, params)
        else:
            stream = await self._join_landed(request, params)
        try:
            async for output in stream:
                # Outputs that piled up while this stream waited go out as one message.
                while (later := stream.next_ready()) is not None:
                    output = merged(output, later)
                yield wire.chunk_from_output(output)
            if stream.aborted:      # cancelled: the last message says so
                yield worker_pb2.TokenChunk(request_id=request.request_id,
                                            finish_reason=wire.finish_reason_to_proto("abort"))
        finally:
            if not stream.finished:     # client gone, or the stream failed: free the request
                await self.loop.abort(request.request_id)

    async def DecodeStream(self, requests, context):
        """Many Decode calls on one stream, their outputs batched (decode_mux.py)."""
        async for batch in decode_stream(self.Decode, requests):
            yield batch

    async def _start_here(self, request: worker_pb2.DecodeRequest, params) -> RequestStream:
        # The blocks a colocated request needs are taken by the engine as it runs; a reservation
        # made for admission only would count them twice. (A gateway sends room_tokens instead:
        # the same check, made as the request joins, in one call to the engine thread.)
        await self.reservations.cancel(request.request_id)
        # generated_token_ids: a stream another worker began; the prompt and those tokens are
        # computed here again and decoding continues after them.
        try:
            return await self.loop.add_request(request.request_id, request.prompt_token_ids, params,
                                               generated_token_ids=request.generated_token_ids,
                                               room_tokens=request.room_tokens)
        except CapacityError:
            self.telemetry.metrics.rejections.labels("kv_blocks").inc()
            raise

    async def _join_landed(self, request: worker_pb2.DecodeRequest, params) -> RequestStream:
        rid = request.request_id
        if not request.generated_token_ids:
            raise InvalidRequestError("generated_token_ids", "must hold the first token (from Prefill)")
        reservation = self.reservations.get(rid)
        try:
            num_tokens = await asyncio.shield(asyncio.wrap_future(reservation.inbox.landed))
        except asyncio.CancelledError:
            await self.reservations.cancel(rid)
            raise
        except Exception as exc:
            raise ReservationError(f"request {rid!r}: its pages did not land: {exc}") from None
        self.telemetry.transferred(
            "received", self.engine.kv.blocks_for(num_tokens) * reservation.inbox.layout.page_bytes)
        expected = len(request.prompt_token_ids) + len(request.generated_token_ids) - 1
        if num_tokens != expected:
            await self.reservations.cancel(rid)
            raise InvalidRequestError("generated_token_ids", f"the pages hold K/V for {num_tokens} "
                                      f"tokens, prompt + generated - 1 is {expected}")
        self.reservations.claim(rid)
        try:
            return await self.loop.add_prefilled_request(rid, request.prompt_token_ids,
                                                         request.generated_token_ids, params)
        except BaseException:
            await self.loop.call(self.engine.cancel_reservation, rid)
            raise

    @unary_edge
    async def Cancel(self, request: worker_pb2.CancelRequest, context) -> worker_pb2.CancelResponse:
        _require_id(request.request_id)
        found = await self.reservations.cancel(request.request_id)
        found = await self.loop.abort(request.request_id) or found
        return worker_pb2.CancelResponse(found=found)

    @unary_edge
    async def Load(self, request: worker_pb2.LoadRequest, context) -> worker_pb2.LoadReport:
        # Plain reads of counters the engine thread updates: a report may be a step stale, which
        # routing tolerates, and it never waits behind a running step.
        kv, scheduler = self.engine.kv, self.engine.scheduler
        return worker_pb2.LoadReport(
            worker_id=self.worker_id,
            role=(worker_pb2.WORKER_ROLE_COLOCATED if self.config.colocated
                  else worker_pb2.WORKER_ROLE_DECODE),
            block_size=kv.block_size, num_blocks=kv.num_blocks, free_blocks=kv.num_free_blocks,
            max_model_len=self.engine.max_model_len,
            reserved_blocks=self.reservations.num_reserved_blocks,
            running_requests=len(scheduler.running), waiting_requests=len(scheduler.waiting),
            kv_address=self.kv_address, prompt_tokens_computed=self.prompt_counter.prompt_tokens,
            kv_bytes_received=self.receiver.bytes_received,
            integrity_error=await integrity_error(self.loop) if request.check_integrity else "")


def _require_id(request_id: str) -> None:
    if not request_id:
        raise InvalidRequestError("request_id", "must not be empty")
