"""The Ray launcher scenario, run in a fresh interpreter by test_workers_ray.py: prefill and
decode as Ray actors on a small local Ray instance, a disaggregated request through them,
token-identical to a colocated engine; a killed actor is restarted and serves again at its
address; a decode worker added to the running cluster (autoscaling) serves, and once removed
its actor is gone. Exits 0 when every check holds; an AssertionError's traceback says which did not."""

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
    cluster = Cluster(ClusterConfig(launcher="ray", engine=CONFIG, ray_num_cpus=3, start_timeout_s=180,
                                    max_decode_workers=2))
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
        await _added_decode_worker_serves_then_goes(cluster, handle.prefill_addresses[0], params,
                                                    handoff.tokens)
    finally:
        await clients.close()
        cluster.stop()


async def _added_decode_worker_serves_then_goes(cluster: Cluster, prefill: str, params,
                                                expected: list[int]) -> None:
    address = await asyncio.to_thread(cluster.add_worker, "decode")
    assert address not in cluster.handle.decode_addresses and address in cluster.running
    actor = cluster.launcher.by_address[address]
    added = WorkerClients(prefill, address)
    try:
        assert (await added.disaggregated("ray-3", PROMPT, params)).tokens == expected
    finally:
        await added.close()
    await asyncio.to_thread(cluster.remove_worker, address)
    assert address not in cluster.running and actor not in cluster.launcher.actors
    try:
        ray.get(actor.address.remote(), timeout=30)
        raise AssertionError("the removed worker's actor still answers")
    except ray.exceptions.RayActorError:
        pass


async def _answers(clients: WorkerClients) -> bool:
    try:
        report = await clients.decode.Load(worker_pb2.LoadRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return report.kv_bytes_received == 0       # a fresh worker, not the killed one


if __name__ == "__main__":
    asyncio.run(main())
    print("ray scenario: ok")
