"""Tandem's gRPC backend: streaming `tandem.v1.Generation/Generate` over grpc.aio. Each message
says how many tokens it carries, so token counts and time to second token are exact here."""

from __future__ import annotations

import asyncio
import itertools
from time import perf_counter

import grpc

from loadgen.backends.base import Backend
from loadgen.errors import TargetUnreachableError
from loadgen.records import BenchRequest, RequestRecord
from services.rpc.tandem.v1 import generation_pb2 as pb
from services.rpc.tandem.v1 import generation_pb2_grpc as pb_grpc

# HTTP/2 servers commonly allow ~100 concurrent streams per connection; beyond that a single
# channel would queue streams inside the client, hiding a client-side cap. One channel per this
# many streams keeps every stream live.
STREAMS_PER_CHANNEL = 100

_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_ABORT: "abort"}


class TandemGrpcBackend(Backend):
    def __init__(self, config) -> None:
        super().__init__(config)
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[pb_grpc.GenerationStub] = []
        self._next = itertools.count()
        address = config.base_url
        for prefix in ("grpc://", "http://"):
            address = address.removeprefix(prefix)
        self.address = address.rstrip("/")
        self._metadata = (("authorization", f"Bearer {config.api_key}"),) if config.api_key else None

    async def open(self, expected_streams: int) -> None:
        count = max(1, -(-expected_streams // STREAMS_PER_CHANNEL))
        for i in range(count):
            # A distinct channel argument gives each channel its own subchannel (TCP connection).
            options = [("tandem.loadgen.channel", i), ("grpc.use_local_subchannel_pool", 1),
                       ("grpc.max_receive_message_length", -1)]
            channel = grpc.aio.insecure_channel(self.address, options=options)
            self._channels.append(channel)
            self._stubs.append(pb_grpc.GenerationStub(channel))
        try:
            await asyncio.wait_for(self._connect(self._channels[0]), self.config.connect_timeout_s)
            models = await self._stubs[0].ListModels(pb.ListModelsRequest(), metadata=self._metadata,
                                                     timeout=self.config.connect_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise TargetUnreachableError(f"cannot reach {self.address}: no gRPC connection within "
                                         f"{self.config.connect_timeout_s:g} s") from None
        except grpc.aio.AioRpcError as exc:
            raise TargetUnreachableError(f"{self.address}: ListModels failed: {exc.code().name}: "
                                         f"{exc.details()}") from None
        if self.model is None and models.models:
            self.model = models.models[0].id

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        """Ready, or TargetUnreachableError at the first failed attempt (channel_ready() would
        keep retrying until the timeout)."""
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise TargetUnreachableError(f"cannot reach {self.address}: the gRPC connection failed")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    def _message(self, request: BenchRequest) -> pb.GenerateRequest:
        sampling = pb.SamplingParams(max_tokens=request.output_len, ignore_eos=self.config.ignore_eos)
        if self.config.temperature is not None:
            sampling.temperature = self.config.temperature
        return pb.GenerateRequest(model=self.model or "", text=request.prompt, sampling=sampling)

    async def stream(self, request: BenchRequest, record: RequestRecord) -> None:
        stub = self._stubs[next(self._next) % len(self._stubs)]
        call = stub.Generate(self._message(request), metadata=self._metadata)
        # grpc.aio has no "request written" signal (wait_for_connection() waits for the server's
        # headers, which may come with the first token), so the send time is the call's start: the
        # message and the call object are built by now, and show as queueing, as over HTTP.
        record.sent = perf_counter()
        try:
            async for message in call:
                now = perf_counter()
                if message.token_ids:
                    record.chunk_times.append(now)
                    record.chunk_tokens.append(len(message.token_ids))
                    record.text_parts.append(message.text)
                if message.finish_reason:
                    record.finish_reason = _FINISH.get(message.finish_reason, "unspecified")
                    record.end = now                   # the last message: the stream is complete
                if message.HasField("usage"):
                    record.server_prompt_tokens = message.usage.prompt_tokens
                    record.server_output_tokens = message.usage.completion_tokens
        except grpc.aio.AioRpcError as exc:
            record.fail(exc.code().name, exc.details() or "")
            return
        finally:
            call.cancel()                      # no-op when done; frees the stream on timeout
        if record.finish_reason is None:
            record.fail("stream_closed", "stream ended without a finish_reason")

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
