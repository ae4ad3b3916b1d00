"""The cluster token on the workers' RPCs: a disaggregated cluster whose workers ask for it serves
through the gateway (gateway -> workers and prefill -> decode pages carry it), while a call to a
worker's services or its KVTransfer endpoint without it, or with another, gets UNAUTHENTICATED
naming the metadata key; health checks need none. Workers started by hand refuse to listen beyond
loopback without a token unless --insecure."""

import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.engine.errors import ConfigError
from services.kvtransfer import TransferConfig
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from services.security.cluster_token import METADATA_KEY, read_token_file
from services.worker.cli import build_parser, worker_config_from_args
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)

TOKEN = "cluster-token-0c8e41"


async def _refused(call) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert METADATA_KEY in info.value.details()


async def test_workers_take_only_calls_that_carry_the_token():
    async with gateway_cluster("disaggregated", kv_transport="grpc",
                               transfer=TransferConfig(cluster_token=TOKEN), cluster_token=TOKEN) as c:
        async with grpc.aio.insecure_channel(c.gateway.grpc_address) as ch:
            request = gen.GenerateRequest(text="hello world", sampling=gen.SamplingParams(max_tokens=4))
            msgs = [m async for m in gen_grpc.GenerationStub(ch).Generate(request)]
            assert msgs[-1].usage.completion_tokens == 4        # pages crossed with the token
        decode, prefill = c.decode[0], c.prefill[0]
        for metadata in (None, ((METADATA_KEY, "not-the-token"),), (("x-other", TOKEN),)):
            async with grpc.aio.insecure_channel(decode.address) as ch:
                await _refused(worker_pb2_grpc.DecodeWorkerStub(ch).Load(worker_pb2.LoadRequest(),
                                                                        metadata=metadata))
                stream = worker_pb2_grpc.DecodeWorkerStub(ch).Decode(worker_pb2.DecodeRequest(),
                                                                     metadata=metadata)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    [m async for m in stream]
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            async with grpc.aio.insecure_channel(prefill.address) as ch:
                await _refused(worker_pb2_grpc.PrefillWorkerStub(ch).Load(worker_pb2.LoadRequest(),
                                                                         metadata=metadata))
            async with grpc.aio.insecure_channel(decode.worker.kv_address) as ch:
                await _refused(worker_pb2_grpc.KVTransferStub(ch).PushPages(
                    iter([worker_pb2.KVChunk()]), metadata=metadata))
                await _refused(worker_pb2_grpc.KVTransferStub(ch).ExportPool(
                    worker_pb2.KVPoolRequest(), metadata=metadata))
        async with grpc.aio.insecure_channel(decode.address) as ch:
            report = await worker_pb2_grpc.DecodeWorkerStub(ch).Load(
                worker_pb2.LoadRequest(), metadata=((METADATA_KEY, TOKEN),))
            assert report.num_blocks > 0
            health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert await c.blocks_all_free(), c.free_blocks()


def test_a_worker_by_hand_beyond_loopback_needs_a_token_or_insecure(tmp_path):
    parser = build_parser("python -m services.decode")
    with pytest.raises(ConfigError, match="--host 0.0.0.0 listens beyond loopback: give --cluster-token-file"):
        worker_config_from_args(parser.parse_args(["--host", "0.0.0.0"]))
    assert not worker_config_from_args(parser.parse_args(["--host", "0.0.0.0", "--insecure"])).transfer.cluster_token
    assert not worker_config_from_args(parser.parse_args([])).transfer.cluster_token     # loopback
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    config = worker_config_from_args(parser.parse_args(["--host", "0.0.0.0", "--cluster-token-file", str(path)]))
    assert config.transfer.cluster_token == TOKEN == read_token_file(str(path))
    assert TOKEN not in repr(config)
    path.write_text("  \n")
    with pytest.raises(ConfigError, match="--cluster-token-file .* is empty"):
        worker_config_from_args(parser.parse_args(["--cluster-token-file", str(path)]))
    with pytest.raises(ConfigError, match="--cluster-token-file .*: cannot read it"):
        worker_config_from_args(parser.parse_args(["--cluster-token-file", str(tmp_path / "absent")]))


async def test_the_process_launcher_hands_the_token_over_in_a_private_file():
    from orchestration.cluster import Cluster, ClusterConfig
    from orchestration.launchers.process import ProcessLauncher
    from services.worker.config import WorkerConfig
    from tests.helpers.workers import engine_config
    config = ClusterConfig(mode="colocated", launcher="process", engine=engine_config(), start_timeout_s=90,
                           worker=WorkerConfig(transfer=TransferConfig(cluster_token=TOKEN)))
    cluster = Cluster(config)
    with cluster as handle:
        assert handle.gateway_fields()["cluster_token"] == TOKEN
        launcher: ProcessLauncher = cluster.launcher
        (path,) = launcher._token_files.values()
        assert os.stat(path).st_mode & 0o077 == 0
        assert all(TOKEN not in " ".join(p.args) for p in launcher.processes)   # not on a command line
        async with grpc.aio.insecure_channel(handle.decode_addresses[0]) as ch:
            stub = worker_pb2_grpc.DecodeWorkerStub(ch)
            await _refused(stub.Load(worker_pb2.LoadRequest()))
            assert (await stub.Load(worker_pb2.LoadRequest(), metadata=((METADATA_KEY, TOKEN),))).num_blocks
    assert not os.path.exists(path)
