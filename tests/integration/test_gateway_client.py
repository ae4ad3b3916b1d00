"""The synchronous client behind `tandem generate --target`: streams RequestOutputs from a running
gateway, and turns statuses back into the typed errors the CLI prints."""

import asyncio

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
