"""Conversions between the proto messages (services/rpc/tandem/v1) and the engine's dataclasses.

The proto messages are the wire form of the engine's shapes (STYLE.md, rule 2); every crossing
goes through these functions so that a field added on one side is mapped in one place:

- `sampling_from_proto(pb.SamplingParams) -> SamplingParams` (validated: raises
  InvalidRequestError naming the field) and `sampling_to_proto(SamplingParams) -> pb.SamplingParams`;
- `logprob_to_proto(TokenLogprob) -> pb.TokenLogprobs` and `logprob_from_proto(...)`;
- `finish_reason_to_proto("stop" | "length" | "abort" | None) -> FinishReason` and back;
- `chunk_from_output(RequestOutput) -> TokenChunk` (decode worker -> gateway) and
  `output_fields_from_chunk(TokenChunk)` (gateway side);
- `block_hash_to_wire(bytes) -> int`: a prefix-cache block hash (services/engine/block_pool.py) as
  the uint64 in LoadReport.cached_block_hashes; the gateway hashes prompts the same way for affinity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from services.engine.errors import InvalidRequestError
from services.engine.outputs import RequestOutput, TokenLogprob
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import generation_pb2, worker_pb2

_FINISH_TO_PROTO = {
    None: generation_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": generation_pb2.FINISH_REASON_STOP,
    "length": generation_pb2.FINISH_REASON_LENGTH,
    "abort": generation_pb2.FINISH_REASON_ABORT,
    # A prefill-only request has produced its first token and handed its KV on: for the client
    # it is not finished, the decode worker carries on.
    "prefilled": generation_pb2.FINISH_REASON_UNSPECIFIED,
}
_FINISH_FROM_PROTO = {
    generation_pb2.FINISH_REASON_UNSPECIFIED: None,
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_ABORT: "abort",
}

# proto3 `optional` fields: absent means "the engine's default", never zero.
_OPTIONAL_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "max_tokens", "logprobs")


def sampling_from_proto(msg: generation_pb2.SamplingParams | None) -> SamplingParams:
    """The engine's SamplingParams for a proto message; unset optional fields keep the defaults.
    Out-of-range values raise InvalidRequestError naming the field (SamplingParams validates)."""
    if msg is None:
        return SamplingParams()
    kwargs: dict = {name: getattr(msg, name) for name in _OPTIONAL_SAMPLING_FIELDS
                    if msg.HasField(name)}
    if "temperature" in kwargs:
        kwargs["temperature"] = float(kwargs["temperature"])
    if "top_p" in kwargs:
        kwargs["top_p"] = float(kwargs["top_p"])
    return SamplingParams(stop=tuple(msg.stop), stop_token_ids=tuple(msg.stop_token_ids),
                          ignore_eos=msg.ignore_eos, **kwargs)


def sampling_to_proto(params: SamplingParams) -> generation_pb2.SamplingParams:
    """Every field is set explicitly, so the receiver rebuilds exactly these parameters."""
    msg = generation_pb2.SamplingParams(
        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
        max_tokens=params.max_tokens, stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids), ignore_eos=params.ignore_eos)
    if params.seed is not None:
        msg.seed = params.seed
    if params.logprobs is not None:
        msg.logprobs = params.logprobs
    return msg


def logprob_to_proto(lp: TokenLogprob) -> generation_pb2.TokenLogprobs:
    return generation_pb2.TokenLogprobs(
        token_id=lp.token_id, logprob=lp.logprob,
        top=[generation_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top])


def logprob_from_proto(msg: generation_pb2.TokenLogprobs) -> TokenLogprob:
    return TokenLogprob(token_id=msg.token_id, logprob=msg.logprob,
                        top=tuple((t.token_id, t.logprob) for t in msg.top))


def logprobs_to_proto(lps: Iterable[TokenLogprob] | None) -> list[generation_pb2.TokenLogprobs]:
    return [logprob_to_proto(lp) for lp in lps or ()]


def logprobs_from_proto(msgs: Sequence[generation_pb2.TokenLogprobs]) -> tuple[TokenLogprob, ...] | None:
    return tuple(logprob_from_proto(m) for m in msgs) if msgs else None


def finish_reason_to_proto(reason: str | None) -> int:
    try:
        return _FINISH_TO_PROTO[reason]
    except KeyError:
        raise ValueError(f"unknown finish reason {reason!r}") from None


def finish_reason_from_proto(value: int) -> str | None:
    try:
        return _FINISH_FROM_PROTO[value]
    except KeyError:
        raise InvalidRequestError("finish_reason", f"unknown value {value}") from None


def chunk_from_output(output: RequestOutput) -> worker_pb2.TokenChunk:
    """The decode worker's stream message for one engine output."""
    return worker_pb2.TokenChunk(
        request_id=output.request_id, token_ids=list(output.new_token_ids),
        logprobs=logprobs_to_proto(output.logprobs),
        finish_reason=finish_reason_to_proto(output.finish_reason if output.finished else None),
        cached_prompt_tokens=output.num_cached_tokens)


@dataclass(frozen=True)
class ChunkFields:
    """What the gateway reads from one TokenChunk, in the engine's types."""

    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finish_reason: str | None
    cached_prompt_tokens: int


def output_fields_from_chunk(chunk: worker_pb2.TokenChunk) -> ChunkFields:
    return ChunkFields(token_ids=tuple(chunk.token_ids), logprobs=logprobs_from_proto(chunk.logprobs),
                       finish_reason=finish_reason_from_proto(chunk.finish_reason),
                       cached_prompt_tokens=chunk.cached_prompt_tokens)


def first_token_fields(response: worker_pb2.PrefillResponse, want_logprobs: bool) -> ChunkFields:
    """The first token as returned by PrefillWorker.Prefill, in the same shape as a decode chunk."""
    logprobs = (logprob_from_proto(response.first_logprobs),) if (
        want_logprobs and response.HasField("first_logprobs")) else None
    return ChunkFields(token_ids=(response.first_token_id,), logprobs=logprobs, finish_reason=None,
                       cached_prompt_tokens=response.cached_prompt_tokens)


def block_hash_to_wire(block_hash: bytes) -> int:
    """The first 8 bytes of a chained block hash, little-endian: a uint64 for LoadReport."""
    return int.from_bytes(block_hash[:8], "little")
