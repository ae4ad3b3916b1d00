"""The Ray launcher: prefill and decode as Ray actors on a small local Ray instance, one
disaggregated request through them, token-identical to a colocated engine."""

from __future__ import annotations

import pytest

from orchestration.cluster import Cluster, ClusterConfig
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import worker_pb2
from tests.helpers.workers import WorkerClients, engine_config, reference_tokens

CONFIG = engine_config(num_blocks=32)
PROMPT = [9 + (i * 5) % 100 for i in range(20)]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ray_actors_serve_a_disaggregated_request() -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6)
    cluster = Cluster(ClusterConfig(launcher="ray", engine=CONFIG, ray_num_cpus=2, start_timeout_s=180))
    handle = cluster.start()
    clients = WorkerClients(handle.prefill_addresses[0], handle.decode_addresses[0])
    try:
        handoff = await clients.disaggregated("ray-1", PROMPT, params)
        assert handoff.tokens == reference_tokens(CONFIG, PROMPT, params)
        check = worker_pb2.LoadRequest(check_integrity=True)
        decode = await clients.decode.Load(check)
        assert decode.prompt_tokens_computed == 0 and decode.kv_bytes_received == handoff.prefill.kv_bytes
        for report in (await clients.prefill.Load(check), decode):
            assert report.integrity_error == "" and report.free_blocks == report.num_blocks
    finally:
        await clients.close()
        cluster.stop()
