"""Round trips between the proto messages and the engine's dataclasses."""

import pytest

from services import wire
from services.engine.errors import InvalidRequestError
from services.engine.outputs import RequestOutput, RequestTimings, TokenLogprob
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import generation_pb2, worker_pb2


def test_unset_optional_fields_keep_engine_defaults():
    assert wire.sampling_from_proto(generation_pb2.SamplingParams()) == SamplingParams()
    assert wire.sampling_from_proto(None) == SamplingParams()


def test_explicit_zero_temperature_is_greedy_not_default():
    params = wire.sampling_from_proto(generation_pb2.SamplingParams(temperature=0.0))
    assert params.temperature == 0.0 and params.greedy


@pytest.mark.parametrize("params", [
    SamplingParams(),
    SamplingParams(temperature=0.0, max_tokens=3),
    SamplingParams(temperature=0.7, top_p=0.5, top_k=40, seed=2**40, max_tokens=99,
                   stop=("\n", "END"), stop_token_ids=(2, 7), ignore_eos=True, logprobs=3),
])
def test_sampling_round_trip(params):
    back = wire.sampling_from_proto(wire.sampling_to_proto(params))
    # float32 on the wire: compare the floats at that precision.
    assert back.temperature == pytest.approx(params.temperature, rel=1e-6)
    assert back.top_p == pytest.approx(params.top_p, rel=1e-6)
    assert (back.top_k, back.seed, back.max_tokens, back.stop, back.stop_token_ids, back.ignore_eos,
            back.logprobs) == (params.top_k, params.seed, params.max_tokens, params.stop,
                               params.stop_token_ids, params.ignore_eos, params.logprobs)


def test_bad_proto_value_names_the_field():
    with pytest.raises(InvalidRequestError) as info:
        wire.sampling_from_proto(generation_pb2.SamplingParams(top_p=1.5))
    assert info.value.field == "top_p"
    with pytest.raises(InvalidRequestError) as info:
        wire.sampling_from_proto(generation_pb2.SamplingParams(max_tokens=0))
    assert info.value.field == "max_tokens"


def test_chunk_from_output_and_back():
    lp = TokenLogprob(token_id=5, logprob=-0.5, top=((5, -0.5), (9, -1.25)))
    out = RequestOutput(request_id="r1", new_token_ids=(5,), text_delta="x", logprobs=(lp,),
                        finished=True, finish_reason="length", num_prompt_tokens=4,
                        num_cached_tokens=2, timings=RequestTimings(0.0, None, None, None))
    fields = wire.output_fields_from_chunk(wire.chunk_from_output(out))
    assert fields == wire.ChunkFields(token_ids=(5,), logprobs=(lp,), finish_reason="length",
                                      cached_prompt_tokens=2)


def test_prefilled_is_not_a_finish_for_the_client():
    assert wire.finish_reason_to_proto("prefilled") == generation_pb2.FINISH_REASON_UNSPECIFIED
    for reason in ("stop", "length", "abort", None):
        assert wire.finish_reason_from_proto(wire.finish_reason_to_proto(reason)) == reason


def test_first_token_fields_from_prefill_response():
    resp = worker_pb2.PrefillResponse(request_id="r", first_token_id=11, cached_prompt_tokens=16,
                                      first_logprobs=generation_pb2.TokenLogprobs(token_id=11, logprob=-0.25))
    assert wire.first_token_fields(resp, want_logprobs=True).logprobs == (TokenLogprob(11, -0.25, ()),)
    assert wire.first_token_fields(resp, want_logprobs=False).logprobs is None
    assert wire.first_token_fields(resp, want_logprobs=False).token_ids == (11,)


def test_block_hash_fits_uint64():
    from services.engine.block_pool import block_hashes
    hashes = [wire.block_hash_to_wire(h) for h in block_hashes(list(range(40)), 16)]
    assert len(hashes) == 2 and all(0 <= h < 2**64 for h in hashes)
    msg = worker_pb2.LoadReport(cached_block_hashes=hashes)
    assert list(msg.cached_block_hashes) == hashes
