"""decode_mux.decode_stream with stand-in Decode handlers: every call on the stream ends with a
status, a handler's abort code and text, UNKNOWN naming an error that got past its error edge;
the stream ends once the gateway's side has and every call has ended."""

from __future__ import annotations

import grpc

from services.decode.decode_mux import decode_stream
from services.rpc.tandem.v1 import worker_pb2


async def _decode(request, context):
    if request.request_id == "aborts":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens: too many")
    if request.request_id == "breaks":
        raise RuntimeError("past the edge")
    yield worker_pb2.TokenChunk(request_id=request.request_id, token_ids=[1, 2])


async def _requests(*ids: str):
    for number, rid in enumerate(ids, 1):
        yield worker_pb2.DecodeStreamRequest(
            call=number, start=worker_pb2.DecodeRequest(request_id=rid))


async def test_every_call_ends_with_its_status_and_the_stream_then_ends():
    outputs = [o async for batch in decode_stream(_decode, _requests("fine", "aborts", "breaks"))
               for o in batch.outputs]
    chunks = [(o.call, list(o.chunk.token_ids)) for o in outputs if o.HasField("chunk")]
    ends = {o.call: (o.code, o.details) for o in outputs if o.ended}
    assert chunks == [(1, [1, 2])]
    assert ends == {1: (grpc.StatusCode.OK.value[0], ""),
                    2: (grpc.StatusCode.INVALID_ARGUMENT.value[0], "max_tokens: too many"),
                    3: (grpc.StatusCode.UNKNOWN.value[0], "RuntimeError: past the edge")}
