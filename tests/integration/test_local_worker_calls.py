"""A worker called in-process (services/worker/local_calls.py) answers as it does over gRPC: the
same responses, streamed tokens, statuses and error texts for the same calls; a deadline or a
cancelled stream frees the request on the worker; a stopped worker or a closed channel answers
UNAVAILABLE at once, never a hang, calls racing its stop included. And an in-process cluster
hands its workers to the gateway this way, workers added later included."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from orchestration.cluster import Cluster, ClusterConfig
from services.decode.worker import DecodeWorker
from services.gateway.config import GatewayConfig
from services.gateway.gateway import Gateway
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.rpc.tandem.v1 import worker_pb2 as wpb
from services.rpc.tandem.v1 import worker_pb2_grpc as wgrpc
from services.worker.config import WorkerConfig
from services.worker.hosting import WorkerThread
from services.worker.local_calls import LocalChannel, local_stub
from tests.helpers.gateway_cluster import HOST, engine_config

pytestmark = pytest.mark.timeout(180)

_GREEDY = gen.SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
_SEEDED = gen.SamplingParams(temperature=0.9, top_k=40, seed=7, max_tokens=6, ignore_eos=True)
_LONG = gen.SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True)   # seconds on CPU


def _decode_worker() -> DecodeWorker:
    return DecodeWorker(WorkerConfig(engine=engine_config(num_blocks=64), colocated=True,
                                     shutdown_grace_s=0.0))


@pytest.fixture(scope="module")
def worker():
    thread = WorkerThread(_decode_worker(), "local-0")
    thread.start(HOST, 0)
    yield thread
    thread.stop()


def _decode(rid: str, sampling=_GREEDY, **fields) -> wpb.DecodeRequest:
    return wpb.DecodeRequest(request_id=rid, prompt_token_ids=[5, 9, 11, 3], sampling=sampling,
                             prefill_here=True, **fields)


# Each call: (method, request, streaming). Good calls and every kind of refusal the edge maps.
_CALLS = [
    ("Load", wpb.LoadRequest(check_integrity=True), False),
    ("Reserve", wpb.ReserveRequest(request_id="r", num_tokens=0), False),
    ("Reserve", wpb.ReserveRequest(request_id="", num_tokens=8), False),
    ("Reserve", wpb.ReserveRequest(request_id="r", num_tokens=8, ttl_ms=2**31), False),
    ("Reserve", wpb.ReserveRequest(request_id="r", num_tokens=10**6, ttl_ms=500), False),
    ("Renew", wpb.RenewRequest(request_ids=["nobody"], ttl_ms=500), False),
    ("Cancel", wpb.CancelRequest(request_id="nobody"), False),
    ("Cancel", wpb.CancelRequest(request_id=""), False),
    ("Decode", _decode("greedy"), True),
    ("Decode", _decode("seeded", _SEEDED), True),
    ("Decode", _decode(""), True),
    ("Decode", _decode("big", gen.SamplingParams(max_tokens=10**6)), True),
    ("Decode", _decode("bad-temperature", gen.SamplingParams(temperature=-1, max_tokens=2)), True),
    ("Decode", wpb.DecodeRequest(request_id="joins", prompt_token_ids=[1, 2]), True),
    ("Decode", wpb.DecodeRequest(request_id="unreserved", prompt_token_ids=[1, 2],
                                 generated_token_ids=[3]), True),
]


async def _outcome(stub, method: str, request, streaming: bool):
    rpc = getattr(stub, method)
    try:
        if streaming:
            # Tokens, not messages: a stream coalesces what its reader has not yet taken.
            return "OK", [t async for m in rpc(request, timeout=60) for t in m.token_ids]
        return "OK", await rpc(request, timeout=60)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()


async def test_every_call_answers_as_over_grpc(worker):
    local = local_stub(worker.local(), "DecodeWorker", LocalChannel())
    async with grpc.aio.insecure_channel(worker.address) as channel:
        remote = wgrpc.DecodeWorkerStub(channel)
        for method, request, streaming in _CALLS:
            over_grpc = await _outcome(remote, method, request, streaming)
            await _no_running(local)    # a stream's request is released just after its end
            in_process = await _outcome(local, method, request, streaming)
            assert in_process == over_grpc, (method, request)
    codes = {(await _outcome(local, m, r, s))[0] for m, r, s in _CALLS}
    assert codes == {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}, codes


async def _no_running(stub) -> None:
    for _ in range(100):
        if not (await stub.Load(wpb.LoadRequest())).running_requests:
            return
        await asyncio.sleep(0.02)


async def _all_free(thread: WorkerThread) -> bool:
    for _ in range(100):
        report = await local_stub(thread.local(), "DecodeWorker", LocalChannel()).Load(
            wpb.LoadRequest(check_integrity=True))
        assert not report.integrity_error, report.integrity_error
        if report.free_blocks == report.num_blocks and not report.running_requests:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_deadline_ends_the_stream_and_frees_its_request(worker):
    stub = local_stub(worker.local(), "DecodeWorker", LocalChannel())
    tokens = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in stub.Decode(_decode("slow", _LONG), timeout=0.3):
            tokens += message.token_ids
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < len(tokens) < 1000
    with pytest.raises(grpc.aio.AioRpcError) as spent:      # as gRPC: the handler never runs
        await stub.Reserve(wpb.ReserveRequest(request_id="late", num_tokens=8), timeout=0.0)
    assert spent.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await _all_free(worker)


async def test_cancelling_a_stream_frees_its_request_on_the_worker(worker):
    stub = local_stub(worker.local(), "DecodeWorker", LocalChannel())
    call = stub.Decode(_decode("cancelled", _LONG), timeout=60)
    async for _ in call:
        break
    assert call.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await anext(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert not call.cancel()
    assert await _all_free(worker)

    # A caller cancelled while it waits (a client gone) cancels the handler the same way.
    reader = asyncio.ensure_future(_outcome(stub, "Decode", _decode("gone", _LONG), True))
    await asyncio.sleep(0.3)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await _all_free(worker)


async def test_a_stopped_worker_or_closed_channel_answers_unavailable():
    thread = WorkerThread(_decode_worker(), "local-1")
    await asyncio.to_thread(thread.start, HOST, 0)
    channel = LocalChannel()
    stub = local_stub(thread.local(), "DecodeWorker", channel)
    try:
        call = stub.Decode(_decode("orphan", _LONG), timeout=60)
        async for _ in call:
            break
    finally:
        await asyncio.to_thread(thread.stop)
    with pytest.raises(grpc.aio.AioRpcError) as mid:
        async for _ in call:
            pass
    assert mid.value.code() == grpc.StatusCode.UNAVAILABLE, mid.value
    for method, request, streaming in _CALLS[:1] + _CALLS[8:9]:
        assert (await asyncio.wait_for(_outcome(stub, method, request, streaming), 5))[0] == \
            "UNAVAILABLE"
    await channel.close()
    assert (await _outcome(stub, "Load", wpb.LoadRequest(), False))[0] == "UNAVAILABLE"


async def test_calls_racing_the_worker_stopping_all_end():
    """Calls sent while the worker stops (before, during and after its loop ends) each end, as
    OK or UNAVAILABLE: none is left on a loop that will never run it."""
    thread = WorkerThread(_decode_worker(), "local-2")
    await asyncio.to_thread(thread.start, HOST, 0)
    stub = local_stub(thread.local(), "DecodeWorker", LocalChannel())
    stopping = asyncio.ensure_future(asyncio.to_thread(thread.stop))
    calls = []
    while not stopping.done():
        calls.append(asyncio.ensure_future(_outcome(stub, "Load", wpb.LoadRequest(), False)))
        calls.append(asyncio.ensure_future(_outcome(stub, "Decode", _decode(f"s{len(calls)}"),
                                                    True)))
        await asyncio.sleep(0.001)
    codes = [code for code, _ in await asyncio.wait_for(asyncio.gather(*calls), 30)]
    assert set(codes) <= {"OK", "UNAVAILABLE"}, set(codes)
    assert codes[-1] == "UNAVAILABLE"


async def test_an_inprocess_cluster_gives_the_gateway_its_workers_without_grpc():
    cluster = Cluster(ClusterConfig(mode="colocated", launcher="inprocess", decode_workers=1,
                                    max_decode_workers=2, engine=engine_config(),
                                    start_timeout_s=120))
    handle = await asyncio.to_thread(cluster.start)
    gateway = Gateway(GatewayConfig(grpc_port=0, http_port=0, worker_ready_timeout_s=60,
                                    **handle.gateway_fields()), cluster.local_worker)
    await gateway.start()
    try:
        added = await asyncio.to_thread(cluster.add_worker, "decode")
        await gateway.add_worker(added, "decode")
        assert [type(w.channel) for w in gateway.pool.decode] == [LocalChannel, LocalChannel]
        async with grpc.aio.insecure_channel(gateway.grpc_address) as ch:
            stub = gen_grpc.GenerationStub(ch)
            for _ in range(4):      # least-loaded routing reaches both workers
                got = [m async for m in stub.Generate(gen.GenerateRequest(text="local",
                                                                          sampling=_GREEDY))]
                assert got[-1].usage.completion_tokens == 6
        served = [t.worker.prompt_counter.prompt_tokens for t in cluster.launcher.threads]
        assert all(served), served
        assert cluster.local_worker("127.0.0.1:1") is None
    finally:
        await gateway.stop()
        await asyncio.to_thread(cluster.stop)
    assert cluster.local_worker(handle.decode_addresses[0]) is None
