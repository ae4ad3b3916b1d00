"""The target's Tandem gRPC side: tandem.v1.Generation (Generate streamed, ListModels)."""

from __future__ import annotations

import asyncio
import itertools
from time import perf_counter

import grpc

from services.rpc.tandem.v1 import generation_pb2 as pb
from services.rpc.tandem.v1 import generation_pb2_grpc as pb_grpc
from tests.loadgen_target.behaviour import EmissionLog, Fate, TargetBehaviour, prompt_tokens
from tests.loadgen_target.http_server import TOKEN_TEXT, sleep_until

_STATUS_FOR_HTTP = {429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
                    400: grpc.StatusCode.INVALID_ARGUMENT}


class TargetGeneration(pb_grpc.GenerationServicer):
    def __init__(self, behaviour: TargetBehaviour, counter: itertools.count, log: EmissionLog,
                 slots: asyncio.Semaphore | None = None) -> None:
        self.behaviour = behaviour
        self.counter = counter
        self.log = log
        self.slots = slots

    async def Generate(self, request, context):
        if self.slots is None:
            async for message in self._generate(request, context, perf_counter()):
                yield message
            return
        async with self.slots:                 # a server at capacity: waiting shows as TTFT
            async for message in self._generate(request, context, perf_counter()):
                yield message

    async def _generate(self, request, context, arrival: float):
        b = self.behaviour
        await self._authenticate(context)
        fate = b.fate(next(self.counter))
        if fate is Fate.ERROR:
            await context.abort(_STATUS_FOR_HTTP.get(b.error_status, grpc.StatusCode.INTERNAL), "injected error")
        n = b.num_tokens(request.sampling.max_tokens if request.sampling.HasField("max_tokens") else None)
        for k in range(n):
            if fate is Fate.STALL and k == b.stall_after:
                await asyncio.sleep(3600)      # cancelled when the client gives up
            if fate is Fate.CLOSE and k == b.close_after:
                return                         # stream ends OK but without finish_reason / usage
            message = pb.GenerateResponse(token_ids=[k % 256], text=TOKEN_TEXT)
            if k == n - 1:
                message.finish_reason = pb.FINISH_REASON_LENGTH
                message.usage.prompt_tokens = prompt_tokens(request.text)
                message.usage.completion_tokens = n
            due = b.token_time(arrival, k)
            await sleep_until(due)
            yield message
            self.log.wrote(k, due, perf_counter())

    async def _authenticate(self, context) -> None:
        key = self.behaviour.api_key
        if key and dict(context.invocation_metadata()).get("authorization") != f"Bearer {key}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad api key")

    async def ListModels(self, request, context):
        await self._authenticate(context)
        return pb.ListModelsResponse(models=[pb.ModelInfo(id=self.behaviour.model, max_model_len=1 << 20)])


def build_grpc_server(behaviour: TargetBehaviour, counter: itertools.count, log: EmissionLog,
                      slots: asyncio.Semaphore | None = None) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1 << 20)])
    pb_grpc.add_GenerationServicer_to_server(TargetGeneration(behaviour, counter, log, slots), server)
    return server
