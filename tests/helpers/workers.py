"""Factories for worker tests: engine configs, a colocated reference run, and the gateway's
side of the disaggregated hand-off (Reserve -> Prefill -> Decode) over real gRPC."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from services import wire
from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc


def engine_config(num_blocks: int = 96, max_num_batched_tokens: int = 24) -> EngineConfig:
    # A small token budget makes a prompt of a few dozen tokens run as several prefill chunks.
    return EngineConfig(cache=CacheConfig(num_blocks=num_blocks),
                        scheduler=SchedulerConfig(max_num_seqs=16,
                                                  max_num_batched_tokens=max_num_batched_tokens))


def reference_tokens(config: EngineConfig, prompt: list[int], params: SamplingParams) -> list[int]:
    """What a single colocated engine produces."""
    engine = LLMEngine(config)
    engine.add_request("reference", prompt, params)
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens += output.new_token_ids
    return tokens


@dataclass
class HandOff:
    tokens: list[int]
    prefill: worker_pb2.PrefillResponse
    finish_reason: int = 0


class WorkerClients:
    """Stubs for one prefill and one decode worker (either may be absent)."""

    def __init__(self, prefill_address: str | None, decode_address: str) -> None:
        self._channels = []
        if prefill_address:
            self.prefill = worker_pb2_grpc.PrefillWorkerStub(self._open(prefill_address))
        self.decode = worker_pb2_grpc.DecodeWorkerStub(self._open(decode_address))

    def _open(self, address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def disaggregated(self, request_id: str, prompt: list[int], params: SamplingParams,
                            transport: str = "", ttl_ms: int = 10_000) -> HandOff:
        sampling = wire.sampling_to_proto(params)
        reserved = await self.decode.Reserve(worker_pb2.ReserveRequest(
            request_id=request_id, num_tokens=len(prompt) + params.max_tokens, ttl_ms=ttl_ms))
        assert reserved.granted, reserved.reason
        first = await self.prefill.Prefill(worker_pb2.PrefillRequest(
            request_id=request_id, prompt_token_ids=prompt, sampling=sampling,
            kv_address=reserved.kv_address, transport=transport, kv_block_ids=reserved.block_ids))
        tokens = [first.first_token_id]
        if first.finish_reason:
            await self.decode.Cancel(worker_pb2.CancelRequest(request_id=request_id))
            return HandOff(tokens, first, first.finish_reason)
        finish_reason = 0
        async for chunk in self.decode.Decode(worker_pb2.DecodeRequest(
                request_id=request_id, prompt_token_ids=prompt, sampling=sampling,
                generated_token_ids=tokens)):
            tokens += chunk.token_ids
            finish_reason = chunk.finish_reason
        return HandOff(tokens, first, finish_reason)

    async def colocated(self, request_id: str, prompt: list[int], params: SamplingParams) -> list[int]:
        tokens: list[int] = []
        async for chunk in self.decode.Decode(worker_pb2.DecodeRequest(
                request_id=request_id, prompt_token_ids=prompt,
                sampling=wire.sampling_to_proto(params), prefill_here=True)):
            tokens += chunk.token_ids
        return tokens


async def wait_for(predicate, timeout_s: float, interval_s: float = 0.02) -> float:
    """Polls an async predicate until true; returns the seconds it took (fails past timeout_s)."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)
    return time.monotonic() - start
