"""Prefill and decode in separate processes (the process launcher), talking gRPC on loopback:
tokens equal a colocated engine's, the pages cross between the processes, the decode worker
never runs the prompt's prefill, and both pools end whole and free."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from orchestration.cluster import Cluster, ClusterConfig
from services.engine.errors import ConfigError, ModelNotFoundError
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import worker_pb2
from services.worker.config import WorkerConfig
from tests.helpers.workers import WorkerClients, engine_config, reference_tokens

pytestmark = pytest.mark.timeout(120)

CONFIG = engine_config()
PROMPT = [5 + (i * 7) % 200 for i in range(50)]


@pytest.fixture(scope="module")
def cluster():
    with Cluster(ClusterConfig(launcher="process", engine=CONFIG, start_timeout_s=90)) as handle:
        yield handle


async def test_separate_processes_give_colocated_tokens(cluster) -> None:
    clients = WorkerClients(cluster.prefill_addresses[0], cluster.decode_addresses[0])
    try:
        computed = 0
        for i, params in enumerate([SamplingParams(temperature=0.0, max_tokens=10),
                                    SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=10)]):
            handoff = await clients.disaggregated(f"p{i}", PROMPT, params, transport="grpc")
            assert handoff.tokens == reference_tokens(CONFIG, PROMPT, params)
            assert handoff.prefill.kv_bytes > 0
            # The second run finds the prompt's full blocks in the prefill worker's prefix cache.
            computed += len(PROMPT) - handoff.prefill.cached_prompt_tokens
        check = worker_pb2.LoadRequest(check_integrity=True)
        prefill, decode = await clients.prefill.Load(check), await clients.decode.Load(check)
        assert prefill.kv_bytes_sent == decode.kv_bytes_received == 2 * handoff.prefill.kv_bytes
        assert prefill.prompt_tokens_computed == computed and handoff.prefill.cached_prompt_tokens == 48
        assert decode.prompt_tokens_computed == 0
        for report in (prefill, decode):
            assert report.integrity_error == ""
            assert report.free_blocks == report.num_blocks and report.reserved_blocks == 0
    finally:
        await clients.close()


def test_a_worker_that_cannot_start_is_reported() -> None:
    with socket.socket() as taken:                  # its KV port is already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = ClusterConfig(launcher="process", mode="colocated", start_timeout_s=60, engine=CONFIG,
                               worker=WorkerConfig(kv_port=taken.getsockname()[1]))
        with pytest.raises(ConfigError, match="did not start"):
            Cluster(config).start()


def test_a_model_that_does_not_exist_is_refused_before_any_worker_starts() -> None:
    cluster = Cluster(ClusterConfig(launcher="process", mode="colocated",
                                    engine=dataclasses.replace(CONFIG, model="no-such-model")))
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        cluster.start()
    assert cluster.launcher is None
