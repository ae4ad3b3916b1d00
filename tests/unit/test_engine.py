"""LLMEngine on the tiny-random preset: validation, streaming outputs, stop strings, abort,
seeded sampling independent of the batch, logprobs and timings."""

from __future__ import annotations

import pytest

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from services.engine.loader import load_model
from services.engine.outputs import RequestOutput
from services.engine.sampling_params import SamplingParams

PROMPT = "Tandem serves language models"


@pytest.fixture(scope="module")
def loaded():
    return load_model("tiny-random")


def make_engine(loaded, **cache) -> LLMEngine:
    cache = {"block_size": 8, "num_blocks": 64, **cache}
    return LLMEngine(EngineConfig(cache=CacheConfig(**cache)), loaded)


def drain(engine: LLMEngine) -> dict[str, list[RequestOutput]]:
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
        engine.check_integrity()
    for out in engine.step():                  # abort outputs come with the next step
        outputs.setdefault(out.request_id, []).append(out)
    return outputs


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def text(outs: list[RequestOutput]) -> str:
    return "".join(o.text_delta for o in outs)


def test_streams_tokens_text_and_timings(loaded):
    engine = make_engine(loaded)
    ids = loaded.tokenizer.encode(PROMPT)
    engine.add_request("r", ids, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    outs = drain(engine)["r"]
    assert len(tokens(outs)) == 8 and all(len(o.new_token_ids) == 1 for o in outs)
    assert [o.finished for o in outs] == [False] * 7 + [True]
    assert outs[-1].finish_reason == "length" and outs[-1].num_prompt_tokens == len(ids)
    assert text(outs) == loaded.tokenizer.decode(tokens(outs))
    t = outs[-1].timings
    assert t.arrival <= t.first_scheduled <= t.first_token <= t.finished
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_stop_string_is_trimmed_and_never_streamed(loaded):
    engine = make_engine(loaded)
    ids = loaded.tokenizer.encode(PROMPT)
    params = dict(temperature=1.0, seed=3, max_tokens=16, ignore_eos=True)
    engine.add_request("free", ids, SamplingParams(**params))
    full = text(drain(engine)["free"])
    # A 3-character stop string that first appears at k >= 2: the output must end right before it.
    k = next(k for k in range(2, len(full) - 3) if full.index(full[k:k + 3]) == k)
    stop = full[k:k + 3]
    engine.add_request("stopped", ids, SamplingParams(**params, stop=(stop, "never-seen")))
    outs = drain(engine)["stopped"]
    assert text(outs) == full[:k]
    assert outs[-1].finish_reason == "stop" and len(tokens(outs)) < 16
    assert all(stop not in o.text_delta for o in outs)


def test_without_detokenize_only_stop_string_requests_get_text(loaded):
    """A worker's engine streams ids alone, except where a stop string needs the text."""
    ids = loaded.tokenizer.encode(PROMPT)
    params = dict(temperature=1.0, seed=3, max_tokens=16, ignore_eos=True)
    full_engine = make_engine(loaded)
    full_engine.add_request("free", ids, SamplingParams(**params))
    full = drain(full_engine)["free"]
    k = next(k for k in range(2, len(text(full)) - 3) if text(full).index(text(full)[k:k + 3]) == k)
    stop = text(full)[k:k + 3]

    engine = LLMEngine(EngineConfig(detokenize=False, cache=CacheConfig(block_size=8, num_blocks=64)),
                       loaded)
    engine.add_request("free", ids, SamplingParams(**params))
    engine.add_request("stopped", ids, SamplingParams(**params, stop=(stop,)))
    outs = drain(engine)
    assert tokens(outs["free"]) == tokens(full) and text(outs["free"]) == ""
    assert text(outs["stopped"]) == text(full)[:k] and outs["stopped"][-1].finish_reason == "stop"


def test_stop_token_id_ends_the_request(loaded):
    engine = make_engine(loaded)
    ids = loaded.tokenizer.encode(PROMPT)
    engine.add_request("free", ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    free = tokens(drain(engine)["free"])
    engine.add_request("s", ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                stop_token_ids=(free[2],)))
    outs = drain(engine)["s"]
    assert tokens(outs) == free[:free.index(free[2]) + 1] and outs[-1].finish_reason == "stop"


def test_seeded_output_is_independent_of_the_batch(loaded):
    ids = loaded.tokenizer.encode(PROMPT)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=42, max_tokens=10,
                            ignore_eos=True)
    alone = make_engine(loaded)
    alone.add_request("x", ids, seeded)
    expected = tokens(drain(alone)["x"])
    busy = LLMEngine(EngineConfig(seed=7, cache=CacheConfig(block_size=8, num_blocks=64),
                                  scheduler=SchedulerConfig(max_num_batched_tokens=9)), loaded)
    busy.add_request("other", ids[:3], SamplingParams(temperature=1.0, max_tokens=10))
    busy.step()
    busy.add_request("x", ids, seeded)
    busy.add_request("another", ids[::-1], SamplingParams(temperature=0.5, seed=1, max_tokens=4))
    assert tokens(drain(busy)["x"]) == expected


def test_logprobs_are_reported_per_token(loaded):
    engine = make_engine(loaded)
    engine.add_request("r", loaded.tokenizer.encode(PROMPT),
                       SamplingParams(temperature=0, max_tokens=3, logprobs=3, ignore_eos=True))
    outs = drain(engine)["r"]
    for out in outs:
        (lp,) = out.logprobs
        assert lp.token_id == out.new_token_ids[0] and len(lp.top) == 3
        assert lp.top[0][0] == lp.token_id and lp.top[0][1] == pytest.approx(lp.logprob)
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1] and lp.logprob <= 0


def test_abort_frees_blocks_and_streams_a_final_output(loaded):
    engine = make_engine(loaded)
    engine.add_request("r", loaded.tokenizer.encode(PROMPT), SamplingParams(max_tokens=20))
    engine.step()
    assert engine.abort("r") and not engine.abort("r") and not engine.abort("unknown")
    (out,) = engine.step()
    assert out.finished and out.finish_reason == "abort" and out.new_token_ids == ()
    engine.check_integrity()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks and not engine.has_unfinished_requests()


@pytest.mark.parametrize("prompt, params, field, limit", [
    ([], SamplingParams(), "prompt", "empty"),
    ([1] * 128, SamplingParams(max_tokens=1), "prompt", "max_model_len=128"),
    ([1] * 100, SamplingParams(max_tokens=29), "max_tokens", "max_model_len=128"),
    ([1, 10**6], SamplingParams(), "prompt_token_ids", "[0, "),
])
def test_bad_requests_raise_typed_errors(loaded, prompt, params, field, limit):
    engine = LLMEngine(EngineConfig(cache=CacheConfig(block_size=8, num_blocks=64),
                                    scheduler=SchedulerConfig(max_model_len=128)), loaded)
    with pytest.raises(InvalidRequestError) as err:
        engine.add_request("r", prompt, params)
    assert err.value.field == field and limit in str(err.value)
    engine.add_request("ok", [1, 2], SamplingParams())
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("ok", [1, 2], SamplingParams())


def test_context_is_capped_by_the_pool_and_the_model(loaded):
    assert make_engine(loaded, num_blocks=4).max_model_len == 32
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        LLMEngine(EngineConfig(scheduler=SchedulerConfig(max_model_len=10**6),
                               cache=CacheConfig(num_blocks=8)), loaded)


def test_unknown_model_is_model_not_found():
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        LLMEngine(EngineConfig(model="no-such-model"))


def test_step_budget_defaults_by_device_and_a_given_one_stays(loaded):
    assert SchedulerConfig().for_device("cuda").max_num_batched_tokens == 8192
    assert SchedulerConfig().for_device("cpu").max_num_batched_tokens == 2048
    given = SchedulerConfig(max_num_batched_tokens=96)
    assert given.for_device("cuda").max_num_batched_tokens == 96
    engine = LLMEngine(EngineConfig(cache=CacheConfig(num_blocks=8)), loaded)
    assert engine.scheduler.config.max_num_batched_tokens == 2048      # the tiny model is on CPU
    with pytest.raises(ConfigError, match="max_num_batched_tokens must be >= 1, got 0"):
        SchedulerConfig(max_num_batched_tokens=0)


@pytest.mark.parametrize("budget", [None, 96])
def test_engine_flags_rebuild_the_step_budget(budget):
    import argparse

    from services.worker.cli import add_engine_arguments, engine_arguments, engine_config_from_args

    config = EngineConfig(scheduler=SchedulerConfig(max_num_batched_tokens=budget))
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    assert engine_config_from_args(parser.parse_args(engine_arguments(config))) == config
