"""DecodeWorker.DecodeStream (services/decode/decode_mux.py) and the gateway's side of it
(services/gateway/decode_stream.py) against a real colocated worker over loopback gRPC: the same
tokens, statuses and error texts as one Decode call per request; many concurrent requests' tokens
arrive in fewer messages than chunks (batched per step); a cancelled call and a deadline free the
request on the worker; a call restarted under the same id after a cancel runs; the worker
stopping fails every open call as UNAVAILABLE and a new stream opens for later calls."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.decode.worker import DecodeWorker
from services.gateway.decode_stream import DecodeStreams
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import worker_pb2 as wpb
from services.rpc.tandem.v1 import worker_pb2_grpc as wgrpc
from services.worker.config import WorkerConfig
from services.worker.hosting import WorkerThread
from tests.helpers.gateway_cluster import HOST, engine_config

pytestmark = pytest.mark.timeout(180)

_GREEDY = gen.SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
_LONG = gen.SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True)   # seconds on CPU


def _worker(name: str) -> WorkerThread:
    return WorkerThread(DecodeWorker(WorkerConfig(engine=engine_config(num_blocks=128),
                                                  colocated=True, shutdown_grace_s=0.0)), name)


@pytest.fixture(scope="module")
def worker():
    thread = _worker("stream-0")
    thread.start(HOST, 0)
    yield thread
    thread.stop()


def _decode(rid: str, sampling=_GREEDY, prompt=(5, 9, 11, 3), **fields) -> wpb.DecodeRequest:
    return wpb.DecodeRequest(request_id=rid, prompt_token_ids=list(prompt), sampling=sampling,
                             prefill_here=True, **fields)


async def _tokens(stub, request, timeout=60):
    try:
        return "OK", [t async for m in stub.Decode(request, timeout=timeout) for t in m.token_ids]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()


async def _idle(stub) -> bool:
    for _ in range(200):
        report = await stub.Load(wpb.LoadRequest(check_integrity=True))
        assert not report.integrity_error, report.integrity_error
        if report.free_blocks == report.num_blocks and not report.running_requests:
            return True
        await asyncio.sleep(0.02)
    return False


_CASES = [
    _decode("greedy"),
    _decode("seeded", gen.SamplingParams(temperature=0.9, top_k=40, seed=7, max_tokens=6,
                                         ignore_eos=True)),
    _decode(""),
    _decode("big", gen.SamplingParams(max_tokens=10**6)),
    _decode("bad-temperature", gen.SamplingParams(temperature=-1, max_tokens=2)),
    wpb.DecodeRequest(request_id="joins", prompt_token_ids=[1, 2]),
    wpb.DecodeRequest(request_id="unreserved", prompt_token_ids=[1, 2], generated_token_ids=[3]),
]


async def test_calls_on_the_stream_answer_as_decode_calls(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        plain = wgrpc.DecodeWorkerStub(channel)
        shared = DecodeStreams(plain)
        answers = []
        for request in _CASES:
            answers.append(await _tokens(plain, request))
            assert await _idle(plain)
            assert await _tokens(shared, request) == answers[-1], request
            assert await _idle(plain)
        assert {code for code, _ in answers} == {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}
        # All at once on the one stream: each gets its own answer.
        assert await asyncio.gather(*(_tokens(shared, r) for r in _CASES)) == answers
        assert await _idle(plain)


async def test_a_call_number_already_running_is_refused(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        start = wpb.DecodeStreamRequest(call=7, start=_decode("twice", _LONG))
        again = wpb.DecodeStreamRequest(call=7, start=_decode("twice-b"))
        call = wgrpc.DecodeWorkerStub(channel).DecodeStream(iter([start, again]))
        ends = []
        async for batch in call:
            ends += [(o.call, o.code, o.details) for o in batch.outputs if o.ended]
            if ends:
                break
        call.cancel()
        assert ends == [(7, grpc.StatusCode.INVALID_ARGUMENT.value[0],
                         "call: 7 is already running on this stream")]
        assert await _idle(wgrpc.DecodeWorkerStub(channel))


async def test_concurrent_requests_come_batched(worker):
    batches = []
    async with grpc.aio.insecure_channel(worker.address) as channel:
        plain = wgrpc.DecodeWorkerStub(channel)

        class Counting:     # counts the worker's messages as they arrive
            def __getattr__(self, name):
                return getattr(plain, name)

            def DecodeStream(self, requests):
                call = plain.DecodeStream(requests)

                async def messages():
                    async for batch in call:
                        batches.append(len(batch.outputs))
                        yield batch
                return messages()

        shared = DecodeStreams(Counting())
        requests = [_decode(f"many-{i}", prompt=(5 + i, 9, 11, 3)) for i in range(16)]
        results = await asyncio.gather(*(_tokens(shared, r) for r in requests))
        assert all(code == "OK" and len(tokens) == 6 for code, tokens in results), results
        alone = [await _tokens(plain, r) for r in requests]
        assert results == alone
    outputs = sum(batches)
    assert outputs >= 16 * 2            # a chunk or more and an end per request
    assert len(batches) < outputs / 2, batches


async def test_cancel_and_deadline_free_the_request(worker):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        plain = wgrpc.DecodeWorkerStub(channel)
        shared = DecodeStreams(plain)
        call = shared.Decode(_decode("cancelled", _LONG), timeout=60)
        async for _ in call:
            break
        assert call.cancel()
        assert not call.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await anext(call)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        # The same id again at once: it waits for the cancelled one, then runs.
        assert await _tokens(shared, _decode("cancelled")) == \
            await _tokens(plain, _decode("cancelled-twin"))
        code, _ = await _tokens(shared, _decode("slow", _LONG), timeout=0.3)
        assert code == "DEADLINE_EXCEEDED"
        # A reader task cancelled (its client gone) cancels the call.
        reader = asyncio.ensure_future(_tokens(shared, _decode("gone", _LONG)))
        await asyncio.sleep(0.3)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert await _idle(plain)


async def test_a_stopping_worker_fails_open_calls_and_a_new_stream_serves_later_ones():
    first, second = _worker("stream-1"), _worker("stream-2")
    await asyncio.to_thread(first.start, HOST, 0)
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            shared = DecodeStreams(wgrpc.DecodeWorkerStub(channel))
            call = shared.Decode(_decode("orphan", _LONG), timeout=60)
            async for _ in call:
                break
            await asyncio.to_thread(first.stop)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
            code, _ = await asyncio.wait_for(_tokens(shared, _decode("meanwhile")), 30)
            assert code == "UNAVAILABLE"
            # A worker back on the same port: a later call opens a new stream to it (once the
            # channel has reconnected, as a gateway's next attempt would find it).
            port = int(first.address.rsplit(":", 1)[1])
            await asyncio.to_thread(second.start, HOST, port)
            for _ in range(100):
                code, tokens = await _tokens(shared, _decode("after"))
                if code == "OK":
                    break
                await asyncio.sleep(0.1)
            assert code == "OK" and len(tokens) == 6
    finally:
        await asyncio.to_thread(first.stop)
        await asyncio.to_thread(second.stop)
