"""The synchronous client behind `tandem generate --target`: streams RequestOutputs from a running
gateway, and turns statuses back into the typed errors the CLI prints."""

import asyncio
import json

import pytest

from services.engine.errors import InvalidRequestError, ModelNotFoundError
from services.engine.sampling_params import SamplingParams
from services.gateway.client import remote_outputs
from services.gateway.errors import WorkerUnavailableError
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(60)


def collect(target, prompt, params, **kw):
    _, outputs = remote_outputs(target, prompt, params, **kw)
    return list(outputs)


async def test_streams_outputs_and_maps_errors():
    async with gateway_cluster("colocated") as c:
        target = c.gateway.grpc_address
        params = SamplingParams(temperature=0, max_tokens=7, logprobs=1)
        outs = await asyncio.to_thread(collect, target, "hello there", params)
        assert sum(len(o.new_token_ids) for o in outs) == 7
        assert outs[-1].finished and outs[-1].finish_reason == "length" and outs[-1].num_prompt_tokens > 0
        assert not any(o.finished for o in outs[:-1])
        assert all(len(o.logprobs) == len(o.new_token_ids) for o in outs)
        assert outs[-1].timings.first_token <= outs[-1].timings.finished
        with pytest.raises(InvalidRequestError) as info:
            await asyncio.to_thread(collect, target, "x", SamplingParams(max_tokens=100_000))
        assert info.value.field == "max_tokens"
        with pytest.raises(ModelNotFoundError):
            await asyncio.to_thread(collect, target, "x", SamplingParams(), model="other")
        port = c.gateway.grpc_port
    with pytest.raises(WorkerUnavailableError):
        await asyncio.to_thread(collect, f"127.0.0.1:{port}", "x", SamplingParams(), timeout_s=5)


async def test_generate_command_with_target_prints_the_servers_answer(capsys):
    from orchestration.cli import main
    from services.engine.loader import load_tokenizer

    async with gateway_cluster("disaggregated") as c:
        argv = ["generate", "--target", c.gateway.grpc_address, "--json", "--temperature", "0",
                "--max-tokens", "5", "hello there"]
        assert await asyncio.to_thread(main, argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt_token_ids"] is None      # the server tokenized it
    assert result["num_prompt_tokens"] == len(load_tokenizer("tiny-random").tokenizer.encode("hello there"))
    assert len(result["token_ids"]) == 5 and result["finish_reason"] == "length"
