"""Metric definitions (a registry per instance), the workers' /metrics endpoint, and GPU gauges
that stay quiet without a GPU."""

import aiohttp

from services.telemetry.exposition import MetricsServer
from services.telemetry.gpu import GpuGauges, free_gpu_memory_bytes
from services.telemetry.metrics import GatewayMetrics, WorkerMetrics, render


def test_instances_do_not_collide():
    a, b = GatewayMetrics(), GatewayMetrics()
    a.ttft.observe(0.01)
    a.rejections.labels("queue_full").inc()
    assert a.registry.get_sample_value("tandem_time_to_first_token_seconds_count") == 1
    assert b.registry.get_sample_value("tandem_time_to_first_token_seconds_count") == 0
    assert b"tandem_rejections_total" in render(a.registry)


def test_gpu_gauges_without_a_gpu_do_nothing():
    metrics = WorkerMetrics("decode")
    gauges = GpuGauges(metrics.registry)
    gauges.update()
    if not gauges.available:
        assert b"tandem_gpu_" not in render(metrics.registry)
        assert free_gpu_memory_bytes() is None


async def test_worker_metrics_server():
    metrics = WorkerMetrics("prefill")
    metrics.set_kv_blocks(used=3, reserved=1, free=12)
    metrics.tokens.labels("prompt").inc(40)
    metrics.kv_transfer_bytes.labels("sent").inc(1 << 20)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{server.port}/metrics") as r:
                text = await r.text()
        assert r.status == 200
        assert 'tandem_worker_kv_blocks{state="free"} 12.0' in text
        assert 'tandem_worker_tokens_total{kind="prompt"} 40.0' in text
        assert 'tandem_worker_kv_transfer_bytes_total{direction="sent"}' in text
    finally:
        await server.stop()
