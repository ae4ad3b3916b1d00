"""Ray node groups on GPUs: a prefill and a decode actor of one group, one GPU each (Ray makes
only its own card visible to each actor), ship pages over cuda_ipc, and the tokens equal a
colocated engine's; with a third GPU, a decode worker added to the running cluster (what the
autoscaler does) gets its own card and serves too.

    python -m pytest -m gpu -v tests/gpu/test_ray_node_group_gpu.py"""

from __future__ import annotations

import asyncio

import pytest
import torch

from orchestration.cluster import Cluster, ClusterConfig
from services.engine.sampling_params import SamplingParams
from tests.helpers.workers import WorkerClients, engine_config, reference_tokens

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600),
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]

PROMPT = [11 + (i * 3) % 150 for i in range(40)]


async def test_a_node_group_on_two_gpus_ships_pages_over_cuda_ipc() -> None:
    ray = pytest.importorskip("ray")
    config = engine_config(num_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    extra = 1 if torch.cuda.device_count() >= 3 else 0
    cluster = Cluster(ClusterConfig(launcher="ray", engine=config, kv_transport="cuda_ipc",
                                    max_decode_workers=1 + extra, start_timeout_s=300))
    handle = await asyncio.to_thread(cluster.start)
    try:
        assert all(p.gpu_share == 1.0 for p in cluster.placements), cluster.placements
        decodes = list(handle.decode_addresses)
        if extra:
            decodes.append(await asyncio.to_thread(cluster.add_worker, "decode"))
        expected = reference_tokens(config, PROMPT, params)
        for i, decode in enumerate(decodes):
            clients = WorkerClients(handle.prefill_addresses[0], decode)
            try:
                handoff = await clients.disaggregated(f"gpu-{i}", PROMPT, params, transport="cuda_ipc")
            finally:
                await clients.close()
            assert handoff.tokens == expected and handoff.prefill.kv_bytes > 0
        nodes = {cluster.launcher.node_of(a) for a in cluster.running}
        assert len(nodes) == 1                       # one group: one node
        assert ray.is_initialized()
    finally:
        await asyncio.to_thread(cluster.stop)
