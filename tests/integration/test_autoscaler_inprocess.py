"""The autoscaler carrying out its decisions on a real cluster (in-process launcher) behind a real
gateway: an idle extra decode worker is drained and stopped, a role below its minimum gets a new
worker that the gateway routes to, a decision the cluster cannot carry out is counted as a
failure, and the metrics follow."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import grpc
import pytest

from orchestration.autoscaler import Autoscaler, AutoscalerConfig
from orchestration.cluster import Cluster, ClusterConfig
from orchestration.scaling_policy import RoleLimits, ScalingPolicyConfig
from services.gateway.config import GatewayConfig
from services.gateway.gateway import Gateway
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import engine_config

pytestmark = pytest.mark.timeout(240)

FAST = ScalingPolicyConfig(prefill=RoleLimits(1, 1), decode=RoleLimits(1, 2), sustain_ticks=1,
                           up_cooldown_s=0.0, down_cooldown_s=0.0)


def _gauge(text: str, role: str) -> float:
    return float(re.search(rf'^tandem_workers\{{role="{role}"\}} (\S+)$', text, re.M).group(1))


async def _complete(gateway: Gateway) -> int:
    async with grpc.aio.insecure_channel(gateway.grpc_address) as ch:
        n = 0
        async for msg in gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                text="scaled", sampling=gen.SamplingParams(max_tokens=6, ignore_eos=True))):
            n += len(msg.token_ids)
        return n


async def test_the_autoscaler_retires_an_idle_worker_and_adds_one_below_the_minimum():
    cluster = Cluster(ClusterConfig(launcher="inprocess", decode_workers=2, max_decode_workers=2,
                                    engine=engine_config(), start_timeout_s=120))
    handle = await asyncio.to_thread(cluster.start)
    gateway = Gateway(GatewayConfig(grpc_port=0, http_port=0, worker_ready_timeout_s=60,
                                    **handle.gateway_fields()))
    await gateway.start()
    try:
        idle = Autoscaler(AutoscalerConfig(policy=FAST), gateway, cluster, max_num_seqs=64)
        decisions = await idle.tick()
        assert [(d.role, d.direction, d.reason) for d in decisions] == [("decode", "down", "idle")]
        assert len(gateway.pool.decode) == 1 and len(cluster.running) == 2
        assert _gauge(gateway.render_metrics().decode(), "decode") == 1
        assert await _complete(gateway) == 6

        short = Autoscaler(AutoscalerConfig(policy=dataclasses.replace(FAST, decode=RoleLimits(2, 2))),
                           gateway, cluster, max_num_seqs=64, metrics=idle.metrics)
        decisions = await short.tick()
        assert [(d.role, d.direction, d.reason) for d in decisions] == [("decode", "up", "below_min")]
        added = gateway.pool.decode[-1]
        assert added.address in cluster.running and added.accepting and len(cluster.running) == 3
        assert _gauge(gateway.render_metrics().decode(), "decode") == 2

        # Limits beyond the cluster's plan: the decision fails (no free slot) and is counted.
        beyond = Autoscaler(AutoscalerConfig(policy=dataclasses.replace(FAST, decode=RoleLimits(3, 3))),
                            gateway, cluster, max_num_seqs=64, metrics=idle.metrics)
        await beyond.tick()
        assert beyond.decisions == [] and len(gateway.pool.decode) == 2
        metrics = gateway.render_metrics().decode()
        assert 'tandem_scaling_failures_total{direction="up",role="decode"} 1.0' in metrics
        assert 'tandem_scaling_decisions_total{direction="down",reason="idle",role="decode"} 1.0' in metrics
        assert await _complete(gateway) == 6
    finally:
        await gateway.stop()
        await asyncio.to_thread(cluster.stop)
