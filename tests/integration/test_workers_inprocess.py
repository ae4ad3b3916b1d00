"""Prefill worker -> decode worker over real gRPC on loopback, both in this process: the tokens
equal a single colocated engine's, the pages cross the transport (counted), the decode engine
never runs the prompt's prefill, and every path leaves both pools whole and free."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading

import aiohttp
import grpc
import pytest

from services import wire
from services.decode.worker import DecodeWorker
from services.engine.errors import ConfigError
from services.engine.sampling_params import SamplingParams
from services.kvtransfer import frames
from services.kvtransfer.grpc_sender import PUSH_PAGES
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import generation_pb2, worker_pb2
from services.worker.config import WorkerConfig
from tests.helpers.workers import WorkerClients, engine_config, reference_tokens, wait_for

pytestmark = pytest.mark.timeout(60)

PROMPT = list(range(3, 3 + 45))          # 45 tokens: three pages of 16, two prefill chunks of 24
CONFIG = engine_config()


@pytest.fixture
async def pair():
    prefill = PrefillWorker(WorkerConfig(engine=CONFIG, reaper_interval_s=0.02, metrics_port=0))
    decode = DecodeWorker(WorkerConfig(engine=CONFIG, reaper_interval_s=0.02, metrics_port=0))
    clients = WorkerClients(await prefill.start("127.0.0.1"), await decode.start("127.0.0.1"))
    try:
        yield prefill, decode, clients
        for worker in (prefill, decode):
            await worker.loop.call(worker.engine.check_integrity)
            assert worker.engine.kv.num_free_blocks == worker.engine.kv.num_blocks
        assert len(decode.receiver) == 0 and decode.reservations.num_reserved_blocks == 0
    finally:
        await clients.close()
        await prefill.stop()
        await decode.stop()


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            return await reply.text()


async def load(clients: WorkerClients, which: str) -> worker_pb2.LoadReport:
    return await getattr(clients, which).Load(worker_pb2.LoadRequest())


@pytest.mark.parametrize("transport", ["grpc", "local"])
@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0, max_tokens=12),
                                    SamplingParams(temperature=0.9, top_k=40, seed=1234, max_tokens=12)],
                         ids=["greedy", "seeded"])
async def test_disaggregated_tokens_equal_colocated(pair, transport, params) -> None:
    prefill, decode, clients = pair
    expected = reference_tokens(CONFIG, PROMPT, params)
    handoff = await clients.disaggregated(f"r-{transport}", PROMPT, params, transport)
    assert handoff.tokens == expected
    page_bytes = decode.engine.kv.kv_cache[0].numel() * decode.engine.kv.kv_cache.element_size()
    assert handoff.prefill.kv_bytes == 3 * page_bytes
    prefill_load, decode_load = await load(clients, "prefill"), await load(clients, "decode")
    assert prefill_load.kv_bytes_sent == decode_load.kv_bytes_received == 3 * page_bytes
    assert prefill_load.prompt_tokens_computed == len(PROMPT)
    assert len(prefill_load.cached_block_hashes) == 2      # the prompt's two full blocks, for affinity
    assert decode_load.prompt_tokens_computed == 0
    metrics = await _scrape(decode.metrics_port)
    assert f'tandem_worker_kv_transfer_bytes_total{{direction="received"}} {float(3 * page_bytes)}' in metrics
    assert 'tandem_worker_tokens_total{kind="prompt"} 0.0' in metrics
    # The same request run colocated on the decode worker gives the same tokens too.
    assert await clients.colocated("r-here", PROMPT, params) == expected


async def test_concurrent_requests_batch_and_all_finish(pair) -> None:
    _, _, clients = pair
    params = SamplingParams(temperature=0.0, max_tokens=6)
    prompts = [PROMPT[i:] for i in range(8)]
    results = await asyncio.gather(*(clients.disaggregated(f"c{i}", p, params)
                                     for i, p in enumerate(prompts)))
    for prompt, result in zip(prompts, results):
        assert result.tokens == reference_tokens(CONFIG, prompt, params)


async def test_a_first_token_that_ends_the_request_ships_nothing(pair) -> None:
    _, decode, clients = pair
    handoff = await clients.disaggregated("one", PROMPT, SamplingParams(temperature=0.0, max_tokens=1))
    assert handoff.prefill.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert handoff.prefill.kv_bytes == 0 and decode.receiver.bytes_received == 0


async def test_an_unclaimed_reservation_expires_and_frees_its_blocks(pair) -> None:
    _, decode, clients = pair
    reply = await clients.decode.Reserve(worker_pb2.ReserveRequest(request_id="idle", num_tokens=64,
                                                                   ttl_ms=100))
    assert reply.granted and reply.num_blocks == 4
    assert (await load(clients, "decode")).reserved_blocks == 4
    await wait_for(lambda: _no_reservations(clients), timeout_s=2)
    assert decode.reservations.num_expired == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clients.decode.Decode(worker_pb2.DecodeRequest(
            request_id="idle", prompt_token_ids=PROMPT, generated_token_ids=[1])).read()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _no_reservations(clients: WorkerClients) -> bool:
    report = await load(clients, "decode")
    return report.reserved_blocks == 0 and report.free_blocks == report.num_blocks


async def test_cancel_frees_blocks_on_both_sides_within_a_second(pair) -> None:
    prefill, decode, clients = pair
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    handoff = asyncio.create_task(clients.disaggregated("long", PROMPT, params))
    await wait_for(lambda: _decoding(decode, "long"), timeout_s=10)
    assert not (await clients.prefill.Cancel(worker_pb2.CancelRequest(request_id="long"))).found
    assert (await clients.decode.Cancel(worker_pb2.CancelRequest(request_id="long"))).found
    assert await wait_for(lambda: _all_free(prefill, decode), timeout_s=1.0) < 1.0
    result = await asyncio.wait_for(handoff, timeout=5)
    assert len(result.tokens) < params.max_tokens       # the stream ended early, as an abort
    assert result.finish_reason == generation_pb2.FINISH_REASON_ABORT


async def test_cancel_during_prefill_frees_the_prefill_blocks(pair) -> None:
    prefill, decode, clients = pair
    long_prompt = [3 + i % 250 for i in range(600)]      # 25 chunks of 24 tokens
    params = SamplingParams(temperature=0.0, max_tokens=4)
    handoff = asyncio.create_task(clients.disaggregated("early", long_prompt, params))
    await wait_for(lambda: _prefilling(prefill, "early"), timeout_s=10)
    assert (await clients.prefill.Cancel(worker_pb2.CancelRequest(request_id="early"))).found
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(handoff, timeout=5)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert (await clients.decode.Cancel(worker_pb2.CancelRequest(request_id="early"))).found
    await wait_for(lambda: _all_free(prefill, decode), timeout_s=1.0)


async def _prefilling(prefill: PrefillWorker, request_id: str) -> bool:
    return any(r.request_id == request_id and r.num_computed_tokens > 0
               for r in prefill.engine.scheduler.running)


async def _decoding(decode: DecodeWorker, request_id: str) -> bool:
    return any(r.request_id == request_id for r in decode.engine.scheduler.running)


async def _all_free(prefill: PrefillWorker, decode: DecodeWorker) -> bool:
    return all(w.engine.kv.num_free_blocks == w.engine.kv.num_blocks for w in (prefill, decode))


async def test_a_corrupted_transfer_is_rejected_and_frees_the_reservation(pair) -> None:
    _, decode, clients = pair
    reply = await clients.decode.Reserve(worker_pb2.ReserveRequest(request_id="bad", num_tokens=40))
    page = bytes(decode.engine.kv.kv_cache[0].numel() * 4)
    layout = dataclasses.asdict(decode.receiver.inbox("bad").layout)
    messages = [_kvchunk({"kind": "header", "request_id": "bad", "num_tokens": 10, "total_pages": 1,
                          "first_page": 0, "num_pages": 1,
                          "block_ids": [reply.block_ids[0]], "checksum": "xxh3_64", **layout}),
                frames.encode_data(0, [memoryview(page)]),
                frames.encode_end([12345], len(page))]       # not page's checksum
    async with grpc.aio.insecure_channel(reply.kv_address) as channel:
        push = channel.stream_unary(PUSH_PAGES, request_serializer=lambda b: b,
                                    response_deserializer=worker_pb2.PushAck.FromString)
        ack = await push(iter(messages))
    assert not ack.ok and "checksum mismatch" in ack.error
    await wait_for(lambda: _no_reservations(clients), timeout_s=1)


def _kvchunk(frame: dict) -> bytes:
    packed = frames.msgpack.packb(frame)
    return frames._as_kvchunk([packed], len(packed))


@pytest.mark.parametrize("make_call, field", [
    (lambda c: c.prefill.Prefill(worker_pb2.PrefillRequest(request_id="e", prompt_token_ids=[])), "prompt"),
    (lambda c: c.prefill.Prefill(worker_pb2.PrefillRequest(request_id="", prompt_token_ids=[1])), "request_id"),
    (lambda c: c.prefill.Prefill(worker_pb2.PrefillRequest(
        request_id="t", prompt_token_ids=[1], sampling={"temperature": -1.0})), "temperature"),
    (lambda c: c.prefill.Prefill(worker_pb2.PrefillRequest(
        request_id="v", prompt_token_ids=[10**6])), "prompt_token_ids"),
    (lambda c: c.prefill.Prefill(worker_pb2.PrefillRequest(
        request_id="k", prompt_token_ids=[1], kv_address="x:1", transport="pigeon")), "transport"),
    (lambda c: c.decode.Reserve(worker_pb2.ReserveRequest(request_id="n", num_tokens=0)), "num_tokens"),
    (lambda c: c.decode.Reserve(worker_pb2.ReserveRequest(request_id="n", num_tokens=10**6)), "num_tokens"),
    (lambda c: c.decode.Decode(worker_pb2.DecodeRequest(request_id="d", prompt_token_ids=[1])).read(),
     "generated_token_ids"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(pair, make_call, field) -> None:
    _, _, clients = pair
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await make_call(clients)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    # ...and the workers keep serving.
    assert (await load(clients, "prefill")).num_blocks > 0


async def test_a_failed_transfer_frees_the_prefill_blocks_and_says_unavailable(pair) -> None:
    prefill, _, clients = pair
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clients.prefill.Prefill(worker_pb2.PrefillRequest(
            request_id="lost", prompt_token_ids=PROMPT, kv_address=nowhere, transport="grpc",
            sampling=wire.sampling_to_proto(SamplingParams(temperature=0.0, max_tokens=4))))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "lost" in err.value.details()
    report = await load(clients, "prefill")
    assert report.free_blocks == report.num_blocks and report.queued_prompt_tokens == 0


async def test_a_worker_that_cannot_bind_cleans_up_and_says_why() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for worker in (PrefillWorker(WorkerConfig(engine=CONFIG)), DecodeWorker(WorkerConfig(engine=CONFIG))):
            with pytest.raises(ConfigError, match="cannot listen"):
                await worker.start("127.0.0.1", port)
            await worker.stop()                   # idempotent after a failed start
            assert not [t for t in threading.enumerate() if t.name == f"{worker.worker_id}-loop"]


async def test_renewing_keeps_a_waiting_reservation_past_its_ttl(pair) -> None:
    _, decode, clients = pair
    reply = await clients.decode.Reserve(worker_pb2.ReserveRequest(request_id="wait", num_tokens=64,
                                                                   ttl_ms=150))
    assert reply.granted
    for _ in range(8):                                    # 0.4 s: well past the 150 ms ttl
        renewed = await clients.decode.Renew(worker_pb2.RenewRequest(
            request_ids=["wait", "never-made"], ttl_ms=150))
        assert list(renewed.missing_request_ids) == ["never-made"]
        await asyncio.sleep(0.05)
    assert (await load(clients, "decode")).reserved_blocks == 4
    assert decode.reservations.num_expired == 0 and decode.reservations.num_renewed == 8
    await wait_for(lambda: _no_reservations(clients), timeout_s=2)   # renewals stop: it lapses
    assert decode.reservations.num_expired == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await clients.decode.Renew(worker_pb2.RenewRequest(request_ids=["wait"], ttl_ms=10**9))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ttl_ms" in err.value.details()


async def test_auto_picks_the_local_transport_inside_one_process(pair) -> None:
    prefill, decode, _ = pair
    assert prefill.transports.sender_for(decode.kv_address).name == "local"
    assert prefill.transports.sender_for(decode.kv_address, "auto").name == "local"
