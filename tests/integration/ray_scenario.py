"""The Ray launcher scenario, run in a fresh interpreter by test_workers_ray.py: prefill and
decode as Ray actors on a small local Ray instance, a disaggregated request through them,
token-identical to a colocated engine; a killed actor is restarted and serves again at its
address. Exits 0 when every check holds; an AssertionError's traceback says which did not."""

from __future__ import annotations

import asyncio

import grpc
import ray

from orchestration.cluster import Cluster, ClusterConfig
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import worker_pb2
from tests.helpers.workers import WorkerClients, engine_config, reference_tokens, wait_for

CONFIG = engine_config(num_blocks=32)
PROMPT = [9 + (i * 5) % 100 for i in range(20)]


async def main() -> None:
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
        # A decode actor that dies is restarted by Ray and serves again at the same address.
        ray.kill(cluster.launcher.actors[0], no_restart=False)
        await wait_for(lambda: _answers(clients), timeout_s=60, interval_s=0.5)
        again = await clients.disaggregated("ray-2", PROMPT, params)
        assert again.tokens == handoff.tokens
    finally:
        await clients.close()
        cluster.stop()


async def _answers(clients: WorkerClients) -> bool:
    try:
        report = await clients.decode.Load(worker_pb2.LoadRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return report.kv_bytes_received == 0       # a fresh worker, not the killed one


if __name__ == "__main__":
    asyncio.run(main())
    print("ray scenario: ok")
