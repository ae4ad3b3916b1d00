"""Workers whose engine runs in a process of its own (WorkerConfig.engine_process): the same
tokens as one in-process engine, disaggregated (pages over gRPC into the shared CPU pool) and
colocated; cancel frees the request; and a killed engine process turns into the worker's failure
at once (the open stream ends UNAVAILABLE, health NOT_SERVING), never a hang."""

from __future__ import annotations

import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services import wire
from services.decode.worker import DecodeWorker
from services.engine.sampling_params import SamplingParams
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import worker_pb2
from services.worker.config import WorkerConfig
from tests.helpers.workers import WorkerClients, engine_config, reference_tokens, wait_for

pytestmark = pytest.mark.timeout(120)

PROMPT = list(range(3, 3 + 45))
CONFIG = engine_config()
PARAMS = SamplingParams(temperature=0.0, max_tokens=12)


def _config(**kwargs) -> WorkerConfig:
    return WorkerConfig(engine=CONFIG, reaper_interval_s=0.02, engine_process=True, **kwargs)


async def _check_whole(*workers) -> None:
    for worker in workers:
        await worker.loop.call(worker.engine.check_integrity)
        assert worker.engine.kv.num_free_blocks == worker.engine.kv.num_blocks


async def test_disaggregated_over_grpc_into_the_shared_pool() -> None:
    prefill, decode = PrefillWorker(_config()), DecodeWorker(_config())
    clients = WorkerClients(await prefill.start("127.0.0.1"), await decode.start("127.0.0.1"))
    try:
        handoff = await clients.disaggregated("r", PROMPT, PARAMS, "grpc")
        assert handoff.tokens == reference_tokens(CONFIG, PROMPT, PARAMS)
        assert handoff.prefill.kv_bytes > 0
        report = await clients.decode.Load(worker_pb2.LoadRequest(check_integrity=True))
        assert report.prompt_tokens_computed == 0 and not report.integrity_error
        prefill_report = await clients.prefill.Load(worker_pb2.LoadRequest())
        assert prefill_report.prompt_tokens_computed == len(PROMPT)
        assert len(prefill_report.cached_block_hashes) == 2     # for prefix-affinity routing
        await _check_whole(prefill, decode)
    finally:
        await clients.close()
        await prefill.stop()
        await decode.stop()


async def test_colocated_tokens_cancel_and_a_dead_engine() -> None:
    decode = DecodeWorker(_config(colocated=True))
    clients = WorkerClients(None, await decode.start("127.0.0.1"))
    channel = grpc.aio.insecure_channel(decode.address)
    try:
        assert await clients.colocated("a", PROMPT, PARAMS) == reference_tokens(CONFIG, PROMPT, PARAMS)

        long = SamplingParams(max_tokens=400, ignore_eos=True)
        call = clients.decode.Decode(worker_pb2.DecodeRequest(
            request_id="c", prompt_token_ids=PROMPT, sampling=wire.sampling_to_proto(long),
            prefill_here=True))
        await call.read()
        assert (await clients.decode.Cancel(worker_pb2.CancelRequest(request_id="c"))).found
        chunks = []
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        assert chunks[-1].finish_reason == wire.finish_reason_to_proto("abort")
        await _check_whole(decode)

        call = clients.decode.Decode(worker_pb2.DecodeRequest(
            request_id="d", prompt_token_ids=PROMPT, sampling=wire.sampling_to_proto(long),
            prefill_here=True))
        await call.read()
        # A reservation held when the engine dies: the worker still stops cleanly.
        assert (await clients.decode.Reserve(worker_pb2.ReserveRequest(
            request_id="held", num_tokens=20))).granted
        os.kill(decode.loop.pid, signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await wait_for(not_serving, 30)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await clients.decode.Load(worker_pb2.LoadRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "exited" in info.value.details()
    finally:
        await channel.close()
        await clients.close()
        await decode.stop()


def test_the_flag_reaches_a_launched_worker() -> None:
    from services.worker.cli import build_parser, worker_arguments, worker_config_from_args
    config = _config(colocated=True)
    args = build_parser("w").parse_args(worker_arguments(config))
    assert worker_config_from_args(args).engine_process is True
    assert worker_config_from_args(build_parser("w").parse_args([])).engine_process is False


async def test_a_colocated_cluster_of_worker_processes() -> None:
    from orchestration.cluster import Cluster, ClusterConfig
    config = ClusterConfig(launcher="process", mode="colocated", engine=CONFIG, start_timeout_s=90,
                           worker=WorkerConfig(engine_process=True))
    with Cluster(config) as handle:
        clients = WorkerClients(None, handle.decode_addresses[0])
        try:
            assert await clients.colocated("p", PROMPT, PARAMS) == reference_tokens(CONFIG, PROMPT, PARAMS)
            report = await clients.decode.Load(worker_pb2.LoadRequest(check_integrity=True))
            assert report.integrity_error == "" and report.free_blocks == report.num_blocks
        finally:
            await clients.close()
