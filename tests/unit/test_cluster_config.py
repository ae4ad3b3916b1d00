"""ClusterConfig validation and the mapping from `tandem serve` / `ray_main` flags to the
cluster's and the gateway's configs."""

from __future__ import annotations

import argparse

import pytest

from orchestration.cluster import Cluster, ClusterConfig, ClusterHandle
from orchestration.placement import GIB, Gpus
from services.engine.config import EngineConfig
from orchestration.commands import serve
from services.engine.errors import ConfigError
from services.gateway.config import GatewayConfig


def parse(argv: list[str], **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser, **defaults)
    return parser.parse_args(argv)


def test_serve_defaults_are_the_documented_ones() -> None:
    args = parse([])
    cluster = serve.cluster_config_from_args(args)
    assert (cluster.launcher, cluster.mode, cluster.prefill_workers, cluster.decode_workers) == (
        "ray", "disaggregated", 1, 1)
    assert cluster.engine.model == "tiny-random" and cluster.host == "127.0.0.1"
    assert cluster.ray_address is None
    gateway = serve.gateway_config(args, ClusterHandle("disaggregated", "grpc", ("p:1",), ("d:2",)))
    assert (gateway.host, gateway.grpc_port, gateway.http_port) == ("127.0.0.1", 50051, 8000)
    assert gateway.prefill_workers == ("p:1",) and gateway.decode_workers == ("d:2",)


def test_serve_flags_reach_the_engine_and_the_workers() -> None:
    args = parse(["--mode", "colocated", "--decode-workers", "3", "--launcher", "process",
                  "--num-kv-blocks", "77", "--max-num-seqs", "9", "--worker-host", "0.0.0.0",
                  "--worker-base-port", "41000", "--api-key", "k1", "--model", "tiny-random"])
    cluster = serve.cluster_config_from_args(args)
    assert cluster.engine.cache.num_blocks == 77 and cluster.engine.scheduler.max_num_seqs == 9
    specs = cluster.specs()
    assert [s.role for s in specs] == ["decode"] * 3
    assert [s.port for s in specs] == [41000, 41001, 41002]
    assert all(s.config.colocated and s.host == "0.0.0.0" for s in specs)
    handle = ClusterHandle("colocated", "grpc", (), ("a:1", "b:2", "c:3"))
    assert serve.gateway_config(args, handle).api_keys == ("k1",)


def test_ray_main_joins_the_jobs_cluster_by_default() -> None:
    args = parse([], default_launcher="ray", default_ray_address="auto")
    assert serve.cluster_config_from_args(args).ray_address == "auto"


@pytest.mark.parametrize("fields, message", [
    ({"mode": "both"}, "mode"),
    ({"launcher": "slurm"}, "launcher"),
    ({"kv_transport": "local", "launcher": "process"}, "inprocess"),
    ({"decode_workers": 0}, "decode_workers"),
    ({"prefill_workers": 0}, "prefill_workers"),
    ({"base_port": 65535}, "base_port"),
])
def test_bad_cluster_configs_name_the_field(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ClusterConfig(**fields)


def test_colocated_clusters_have_no_prefill_workers_and_handles_fill_a_gateway_config() -> None:
    config = ClusterConfig(mode="colocated", prefill_workers=5, decode_workers=2)
    assert config.num_prefill == 0 and [s.role for s in config.specs()] == ["decode", "decode"]
    handle = ClusterHandle("colocated", "grpc", (), ("x:1", "y:2"))
    assert GatewayConfig(**handle.gateway_fields()).decode_workers == ("x:1", "y:2")


@pytest.mark.parametrize("launcher", ["process", "ray"])
def test_a_cluster_that_cannot_fit_is_refused_before_any_worker_starts(launcher) -> None:
    config = ClusterConfig(launcher=launcher, engine=EngineConfig(model="llama-3.1-8b-random"))
    cluster = Cluster(config, gpus=Gpus(1, 24 * GIB))       # one 24 GiB card for two 8B workers
    with pytest.raises(ConfigError, match="2 workers share cuda:0 .* leaving no room for a KV pool"):
        cluster.start()
    assert cluster.launcher is None and cluster.handle is None


def test_serve_passes_the_gpu_cap() -> None:
    assert serve.cluster_config_from_args(parse(["--gpus", "0"])).gpus == 0
    with pytest.raises(ConfigError, match="gpus"):
        ClusterConfig(gpus=-1)


def test_autoscale_flags_start_at_the_minimum_and_plan_for_the_maximum() -> None:
    args = parse(["--autoscale", "--min-prefill-workers", "1", "--max-prefill-workers", "3",
                  "--min-decode-workers", "2", "--max-decode-workers", "4", "--scale-up-cooldown", "5"])
    cluster = serve.cluster_config_from_args(args)
    assert (cluster.prefill_workers, cluster.decode_workers) == (1, 2)
    assert (cluster.max_prefill_workers, cluster.max_decode_workers) == (3, 4)
    capacity = cluster.capacity()
    assert (capacity.prefill_workers, capacity.decode_workers) == (3, 4)
    auto = serve.autoscaler_config(args)
    assert (auto.policy.prefill.min_workers, auto.policy.prefill.max_workers) == (1, 3)
    assert (auto.policy.decode.min_workers, auto.policy.decode.max_workers) == (2, 4)
    assert auto.policy.up_cooldown_s == 5
    assert serve.autoscaler_config(parse([])) is None
    colocated = serve.autoscaler_config(parse(["--autoscale", "--mode", "colocated", "--max-decode-workers", "3"]))
    assert colocated.policy.prefill is None and colocated.policy.decode.max_workers == 3


def test_node_groups_pair_prefill_and_decode_workers_round_robin() -> None:
    config = ClusterConfig(prefill_workers=2, decode_workers=4, node_groups=2, launcher="process")
    groups = [(s.role, s.node_group) for s in config.specs()]
    assert groups == [("decode", 0), ("decode", 1), ("decode", 0), ("decode", 1), ("prefill", 0), ("prefill", 1)]


@pytest.mark.parametrize("fields, message", [
    ({"decode_workers": 2, "max_decode_workers": 1}, "max_decode_workers"),
    ({"prefill_workers": 2, "max_prefill_workers": 1}, "max_prefill_workers"),
    ({"mode": "colocated", "max_prefill_workers": 2}, "max_prefill_workers"),
    ({"node_groups": 0}, "node_groups"),
    ({"ray_strategy": "scatter"}, "ray_strategy"),
])
def test_bad_scaling_configs_name_the_field(fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ClusterConfig(**fields)
