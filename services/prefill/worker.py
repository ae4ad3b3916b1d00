"""PrefillWorker: runs a prompt through its engine (chunked prefill; the scheduler batches
prompts under its token budget), samples the first token, ships the prompt's pages to the decode
worker that reserved blocks for them, and frees its own blocks once the decode side has
acknowledged them.

Lifecycle: `await start(host, port=0) -> "host:port"`, `await stop()`. Cancel (or the caller
going away) stops the request wherever it is: queued, prefilling, or mid-transfer."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from services import wire
from services.engine.engine import LLMEngine
from services.engine.errors import ConfigError, InvalidRequestError, RequestCancelledError
from services.kvtransfer import KVTransports, PageRun
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from services.worker.config import WorkerConfig
from services.worker.engine_host import exit_reporter, host_engine
from services.worker.edge import integrity_error, unary_edge
from services.worker.readiness import STOPPING, Readiness
from services.worker.server import start_server
from services.worker.startup import log_ready, warm_up
from services.worker.telemetry import WorkerTelemetry

log = logging.getLogger("tandem.prefill")

AFFINITY_SAMPLE = 4096      # block hashes per load report


class PrefillWorker(worker_pb2_grpc.PrefillWorkerServicer):
    def __init__(self, config: WorkerConfig, engine: LLMEngine | None = None) -> None:
        self.config = config
        self.worker_id = config.named("prefill")
        self.engine = engine
        self.address: str | None = None
        self.kv_bytes_sent = 0
        self.queued_prompt_tokens = 0
        self.loop = None            # EngineLoop, or EngineCoreClient (engine_process)
        self._server: grpc.aio.Server | None = None
        self.readiness = Readiness("tandem.v1.PrefillWorker")
        self._inflight: dict[str, asyncio.Task] = {}

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str, port: int = 0) -> str:
        """Returns once ready: listening, and the engine warmed up (until then the server answers
        health checks NOT_SERVING and refuses every other call)."""
        started = time.perf_counter()
        hosted = await host_engine(self.config, self.worker_id, self.engine, needs_pages=True,
                                   on_exit=exit_reporter(self.readiness, asyncio.get_running_loop()))
        self.loop, self.engine, self.prompt_counter = hosted.loop, hosted.engine, hosted.prompt_counter
        load_s = time.perf_counter() - started
        self.transports = KVTransports(self.config.transfer)
        self.telemetry = WorkerTelemetry("prefill", self.engine, self.prompt_counter)
        self.loop.on_step = self.telemetry.on_step
        pool_device = self.engine.kv.kv_cache.device
        if self.config.kv_transport == "cuda_ipc" and pool_device.type != "cuda":
            await self.stop()
            raise ConfigError(f"kv_transport cuda_ipc needs the KV pool in CUDA memory; this "
                              f"worker's is on {pool_device} (use auto or grpc)")
        try:
            self.metrics_port = await self.telemetry.start(host, self.config.metrics_port)
            self._server, self.address = await start_server(
                lambda server: worker_pb2_grpc.add_PrefillWorkerServicer_to_server(self, server),
                host, port, self.config.transfer, self.readiness, self.config.advertise_host)
            warm_s = await warm_up(self.loop)
        except BaseException:
            await self.stop()
            raise
        await self.readiness.set_serving()
        log_ready(self.worker_id, self.address, self.engine, self.config.engine.cache, load_s, warm_s)
        return self.address

    async def stop(self) -> None:
        """Stops serving; requests in flight are cancelled and free their blocks. Also undoes a
        start that failed half-way. Idempotent."""
        if self.loop is None:
            return
        await self.readiness.set_not_serving(STOPPING)
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s)
        for task in list(self._inflight.values()):
            task.cancel()
        await self.transports.close()
        await self.telemetry.stop()
        self.loop.stop()
        self._server = self.loop = None

    # --- RPCs ------------------------------------------------------------------------------------
    @unary_edge
    async def Prefill(self, request: worker_pb2.PrefillRequest, context) -> worker_pb2.PrefillResponse:
        rid = request.request_id
        if not rid:
            raise InvalidRequestError("request_id", "must not be empty")
        if rid in self._inflight:
            raise InvalidRequestError("request_id", f"{rid!r} is already being prefilled here")
        params = wire.sampling_from_proto(request.sampling if request.HasField("sampling") else None)
        sender = (self.transports.sender_for(request.kv_address,
                                             request.transport or self.config.kv_transport)
                  if request.kv_address else None)
        # The work runs in a task of its own, so that Cancel can stop it and this handler still
        # answers (CANCELLED); if the caller goes away, this handler is cancelled and so is the work.
        work = asyncio.ensure_future(self._prefill(request, params, sender))
        self._inflight[rid] = work
        try:
            return await work
        except asyncio.CancelledError:
            if work.cancelled() and not asyncio.current_task().cancelling():
                raise RequestCancelledError(f"request {rid!r} was cancelled") from None
            raise
        finally:
            del self._inflight[rid]

    async def _prefill(self, request, params, sender) -> worker_pb2.PrefillResponse:
        rid = request.request_id
        counted = len(request.prompt_token_ids)
        self.queued_prompt_tokens += counted
        try:
            stream = await self.loop.add_request(rid, request.prompt_token_ids, params, prefill_only=True)
            output = None
            async for output in stream:
                pass
            self.queued_prompt_tokens -= counted
            counted = 0
            response = worker_pb2.PrefillResponse(
                request_id=rid, first_token_id=output.new_token_ids[0],
                cached_prompt_tokens=output.num_cached_tokens,
                finish_reason=wire.finish_reason_to_proto(output.finish_reason))
            if output.logprobs:
                response.first_logprobs.CopyFrom(wire.logprob_to_proto(output.logprobs[0]))
            if output.finish_reason == "prefilled" and sender is not None:
                block_ids, num_tokens = await self.loop.call(self.engine.held_pages, rid)
                start = time.perf_counter()
                receipt = await sender.send_pages(PageRun(
                    rid, self.engine.kv.kv_cache, tuple(block_ids), num_tokens,
                    dst_block_ids=tuple(request.kv_block_ids)))
                response.kv_bytes = receipt.num_bytes
                response.transfer_seconds = time.perf_counter() - start
                self.kv_bytes_sent += receipt.num_bytes
                self.telemetry.transferred("sent", receipt.num_bytes, receipt.seconds)
            return response
        finally:
            self.queued_prompt_tokens -= counted
            # Prefilled: its pages are on the decode side now (or the hand-off failed); either
            # way they are not needed here. Otherwise abort frees whatever it still holds.
            # A worker stopped in the middle has no engine left to free anything in.
            if self.loop is not None:
                await self.loop.abort(rid)

    @unary_edge
    async def Cancel(self, request: worker_pb2.CancelRequest, context) -> worker_pb2.CancelResponse:
        task = self._inflight.get(request.request_id)
        if task is not None:
            task.cancel()
        return worker_pb2.CancelResponse(found=task is not None)

    @unary_edge
    async def Load(self, request: worker_pb2.LoadRequest, context) -> worker_pb2.LoadReport:
        # Plain reads of counters the engine thread updates (may be a step stale; never blocks).
        kv, scheduler = self.engine.kv, self.engine.scheduler
        return worker_pb2.LoadReport(
            worker_id=self.worker_id, role=worker_pb2.WORKER_ROLE_PREFILL,
            block_size=kv.block_size, num_blocks=kv.num_blocks, free_blocks=kv.num_free_blocks,
            max_model_len=self.engine.max_model_len,
            running_requests=len(scheduler.running), waiting_requests=len(scheduler.waiting),
            queued_prompt_tokens=max(0, self.queued_prompt_tokens),
            # The most recently cached blocks (a sample, bounded): for prefix-affinity routing.
            cached_block_hashes=[wire.block_hash_to_wire(h)
                                 for h in kv.cached_block_hashes()[-AFFINITY_SAMPLE:]],
            prompt_tokens_computed=self.prompt_counter.prompt_tokens,
            kv_bytes_sent=self.kv_bytes_sent,
            integrity_error=await integrity_error(self.loop) if request.check_integrity else "")
