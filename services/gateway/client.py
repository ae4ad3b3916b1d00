"""A small synchronous client of the public gRPC API, streaming one prompt from a running server
as the engine's RequestOutputs (what `tandem generate --target HOST:PORT` prints).

    prompt_ids, outputs = remote_outputs("127.0.0.1:50051", "Hello", SamplingParams(max_tokens=8))
    for output in outputs: print(output.text_delta, end="")

The server does not send the prompt's token ids back, so `prompt_ids` is empty; each output
carries num_prompt_tokens once the usage arrives (on the last one)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from services import wire
from services.engine.errors import (CapacityError, InvalidRequestError, ModelNotFoundError,
                                    TandemError)
from services.engine.outputs import RequestOutput, RequestTimings
from services.engine.sampling_params import SamplingParams
from services.gateway.errors import UnauthenticatedError, WorkerUnavailableError
from services.rpc.tandem.v1 import generation_pb2, generation_pb2_grpc


def remote_outputs(target: str, prompt: str, params: SamplingParams, *, model: str = "",
                   api_key: str | None = None,
                   timeout_s: float | None = None) -> tuple[None, Iterator[RequestOutput]]:
    """The server tokenizes the prompt, so its token ids are not known here (None); the outputs
    carry the count (num_prompt_tokens)."""
    request = generation_pb2.GenerateRequest(model=model, text=prompt,
                                             sampling=wire.sampling_to_proto(params))
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return None, _stream(target, request, metadata, timeout_s)


def _stream(target: str, request: generation_pb2.GenerateRequest, metadata,
            timeout_s: float | None) -> Iterator[RequestOutput]:
    arrival = time.time()
    first_token = None
    with grpc.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        try:
            for msg in stub.Generate(request, metadata=metadata, timeout=timeout_s):
                now = time.time()
                first_token = first_token or now
                reason = wire.finish_reason_from_proto(msg.finish_reason)
                yield RequestOutput(
                    request_id=msg.request_id, new_token_ids=tuple(msg.token_ids), text_delta=msg.text,
                    logprobs=wire.logprobs_from_proto(msg.logprobs), finished=reason is not None,
                    finish_reason=reason, num_prompt_tokens=msg.usage.prompt_tokens,
                    num_cached_tokens=msg.usage.cached_prompt_tokens,
                    timings=RequestTimings(arrival, arrival, first_token, now if reason else None))
        except grpc.RpcError as exc:
            raise _client_error(exc, target) from None


def _client_error(exc: grpc.RpcError, target: str) -> TandemError:
    """A server status as the typed error it was made from, so the CLI prints its message."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, sep, message = details.partition(": ")
        return InvalidRequestError(field, message) if sep else InvalidRequestError("request", details)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFoundError(details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry = dict(exc.trailing_metadata() or ()).get("retry-after")
        return CapacityError(details, retry_after_s=float(retry) if retry else 1.0)
    if code == grpc.StatusCode.UNAVAILABLE:
        return WorkerUnavailableError(f"{target}: {details or 'unreachable'}")
    return TandemError(f"{target}: {code.name}: {details}")
