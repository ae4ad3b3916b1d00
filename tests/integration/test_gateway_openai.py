"""The official openai client against the HTTP API: completions and chat, streaming and not,
usage in the stream, logprobs, stop strings, models; plus /health and /metrics."""

import aiohttp
import openai
import pytest

from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster():
    async with gateway_cluster("disaggregated") as c:
        yield c
        assert await c.blocks_all_free(), c.free_blocks()


def client(cluster) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=cluster.gateway.http_url + "/v1", api_key="unused", max_retries=0,
                              timeout=30)


async def test_completions_stream_and_not_agree(cluster):
    c = client(cluster)
    full = await c.completions.create(model="tiny-random", prompt="the quick brown fox", max_tokens=10,
                                      temperature=0, logprobs=2)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.prompt_tokens > 0 and full.usage.completion_tokens == 10
    assert len(full.choices[0].logprobs.tokens) == 10
    assert all(len(top) <= 2 for top in full.choices[0].logprobs.top_logprobs)
    stream = await c.completions.create(model="tiny-random", prompt="the quick brown fox", max_tokens=10,
                                        temperature=0, stream=True, stream_options={"include_usage": True})
    text, usage, reasons = "", None, []
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            reasons.append(chunk.choices[0].finish_reason)
        if chunk.usage:
            usage = chunk.usage
    assert text == full.choices[0].text
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert usage.completion_tokens == 10 and usage.total_tokens == full.usage.total_tokens


async def test_chat_stream_and_not_agree(cluster):
    c = client(cluster)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    full = await c.chat.completions.create(model="tiny-random", messages=messages, max_tokens=8,
                                           temperature=0.7, seed=5, logprobs=True, top_logprobs=3)
    msg = full.choices[0].message
    assert msg.role == "assistant" and full.usage.completion_tokens == 8
    assert len(full.choices[0].logprobs.content) == 8
    stream = await c.chat.completions.create(model="tiny-random", messages=messages, max_tokens=8,
                                             temperature=0.7, seed=5, stream=True)
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == msg.content


async def test_stop_string_cuts_text_and_reports_stop(cluster):
    c = client(cluster)
    base = await c.completions.create(model="tiny-random", prompt="the cat sat on the mat", max_tokens=16,
                                      temperature=0, extra_body={"ignore_eos": True})
    text = base.choices[0].text
    # A stop string from the middle of the greedy output: the reply must end right before it.
    stop = next(ch for ch in text[1:] if ch.isascii() and ch.isprintable() and not ch.isspace())
    cut = text[:text.index(stop)]
    for stream in (False, True):
        resp = await c.completions.create(model="tiny-random", prompt="the cat sat on the mat", max_tokens=16,
                                          temperature=0, stop=[stop], stream=stream)
        if stream:
            chunks = [ch async for ch in resp]
            got, reason = "".join(ch.choices[0].text for ch in chunks), chunks[-1].choices[0].finish_reason
        else:
            got, reason = resp.choices[0].text, resp.choices[0].finish_reason
        assert (got, reason) == (cut, "stop")


async def test_models_and_errors_through_the_client(cluster):
    c = client(cluster)
    models = await c.models.list()
    assert [m.id for m in models.data] == ["tiny-random"]
    assert (await c.models.retrieve("tiny-random")).id == "tiny-random"
    with pytest.raises(openai.NotFoundError):
        await c.models.retrieve("gpt-9")
    with pytest.raises(openai.NotFoundError):
        await c.completions.create(model="gpt-9", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as info:
        await c.completions.create(model="tiny-random", prompt="x", max_tokens=2, n=2)
    assert "n" == info.value.body["param"]


async def test_health_and_metrics(cluster):
    async with aiohttp.ClientSession() as s:
        async with s.get(cluster.gateway.http_url + "/health") as r:
            assert r.status == 200
        await (await s.post(cluster.gateway.http_url + "/v1/completions",
                            json={"prompt": "hi", "max_tokens": 3})).read()
        async with s.get(cluster.gateway.http_url + "/metrics") as r:
            text = await r.text()
    assert r.status == 200
    for name in ("tandem_time_to_first_token_seconds_bucket", "tandem_e2e_request_latency_seconds_count",
                 "tandem_admissions_total", "tandem_kv_blocks", "tandem_kv_transfer_bytes_count",
                 "tandem_running_requests", "tandem_worker_requests"):
        assert name in text, name


async def test_chat_without_max_tokens_gets_what_a_decode_pool_can_hold():
    from tests.helpers.gateway_cluster import engine_config
    # Decode pools of 20 blocks x 16 tokens = 320 tokens, far below the model's 4096.
    async with gateway_cluster("disaggregated", decode_engine=engine_config(num_blocks=20)) as c:
        resp = await client(c).chat.completions.create(
            model="tiny-random", messages=[{"role": "user", "content": "hi"}],
            extra_body={"ignore_eos": True})
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage.prompt_tokens + resp.usage.completion_tokens == 320
        assert await c.blocks_all_free(), c.free_blocks()
