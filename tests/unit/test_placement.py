"""Placement on simulated machines (0-3 GPUs, 1-4 workers): devices, GPU shares and memory
budgets; the refusal of a plan whose workers cannot hold the weights; what reaches each
worker's engine config."""

from __future__ import annotations

import pytest

from orchestration.cluster import ClusterConfig, plan
from orchestration.placement import GIB, Gpus, place
from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.errors import ConfigError
from services.engine.loader import load_tokenizer
from services.worker.cli import build_parser, worker_arguments, worker_config_from_args

H200 = 141 * GIB


@pytest.mark.parametrize("num_gpus", [0, 1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2, 3, 4])
def test_every_card_is_shared_out_and_no_card_is_overcommitted(num_gpus, num_workers) -> None:
    placements = place(num_workers, Gpus(num_gpus, H200), 0.9)
    assert len(placements) == num_workers
    if num_gpus == 0:
        assert all(p.device == "cpu" and not p.on_gpu and p.gpu_share == 0 for p in placements)
        return
    used = sorted({p.gpu_index for p in placements})
    assert used == list(range(min(num_gpus, num_workers)))       # spread before sharing
    for index in used:
        on_card = [p for p in placements if p.gpu_index == index]
        assert all(p.device == f"cuda:{index}" and p.sharing == len(on_card) for p in on_card)
        assert sum(p.gpu_share for p in on_card) <= 1.0
        assert sum(p.memory_fraction for p in on_card) == pytest.approx(0.9)
        assert sum(p.budget_bytes for p in on_card) <= 0.9 * H200
    if num_gpus >= num_workers:
        assert all(p.gpu_share == 1.0 and p.sharing == 1 for p in placements)


def test_three_workers_on_two_gpus() -> None:
    placements = place(3, Gpus(2, 80 * GIB), 0.8)
    assert [p.device for p in placements] == ["cuda:0", "cuda:1", "cuda:0"]
    assert [p.gpu_share for p in placements] == [0.5, 1.0, 0.5]
    assert [p.memory_fraction for p in placements] == pytest.approx([0.4, 0.8, 0.4])
    assert placements[0].budget_bytes == int(80 * GIB * 0.4)


def test_fractional_shares_stay_within_one_gpu_in_rays_steps() -> None:
    placements = place(3, Gpus(1), 0.85)
    assert [p.gpu_share for p in placements] == [0.3333] * 3
    assert all(p.budget_bytes is None for p in placements)      # memory unknown: no byte budget


def test_an_explicit_device_pins_every_worker() -> None:
    assert [p.device for p in place(2, Gpus(4, H200), 0.85, "cpu")] == ["cpu", "cpu"]
    pinned = place(2, Gpus(4, H200), 0.8, "cuda:3")
    assert [(p.device, p.sharing, p.memory_fraction) for p in pinned] == [("cuda:3", 2, 0.4)] * 2
    with pytest.raises(ConfigError, match="cuda:5 does not exist"):
        place(1, Gpus(2), 0.8, "cuda:5")
    with pytest.raises(ConfigError, match="device"):
        place(1, Gpus(2), 0.8, "tpu")


def _8b(**fields) -> ClusterConfig:
    return ClusterConfig(engine=EngineConfig(model="llama-3.1-8b-random"), **fields)


def _model(name: str, dtype: str = "bfloat16"):
    return load_tokenizer(name).config.replace(dtype=dtype)


def test_two_8b_workers_on_a_card_too_small_for_both_are_refused() -> None:
    model = _model("llama-3.1-8b-random")
    assert 14.5 * GIB < model.weight_bytes < 15.5 * GIB      # 8.03 B parameters in bf16
    with pytest.raises(ConfigError, match=r"2 workers share cuda:0 \(24\.0 GiB\).*weights of "
                                          r"llama-3.1-8b-random take 14.96 GiB"):
        plan(_8b(), Gpus(1, 24 * GIB), model)
    # One worker fits on that card; two fit on two of them, or on an H200.
    assert len(plan(_8b(mode="colocated"), Gpus(1, 24 * GIB), model)) == 1
    assert len(plan(_8b(), Gpus(2, 24 * GIB), model)) == 2
    assert [p.sharing for p in plan(_8b(), Gpus(1, H200), model)] == [2, 2]


def test_a_byte_budget_replaces_the_fraction_and_is_checked_too() -> None:
    model = _model("llama-3.1-8b-random")
    engine = EngineConfig(model="llama-3.1-8b-random", cache=CacheConfig(gpu_memory_bytes=10 * GIB))
    with pytest.raises(ConfigError, match="runs alone on cuda:0"):
        plan(ClusterConfig(mode="colocated", engine=engine), Gpus(1, H200), model)


def test_the_gpu_cap_and_cpu_plans_never_check_gpu_memory() -> None:
    model = _model("llama-3.1-8b-random")
    placements = plan(_8b(gpus=0), Gpus(1, 8 * GIB), model)
    assert [p.device for p in placements] == ["cpu", "cpu"]
    assert [p.device for p in plan(_8b(gpus=1), Gpus(4, H200), model)] == ["cuda:0", "cuda:0"]


def test_each_worker_gets_its_device_share_and_a_pool_no_larger_than_it_can_use() -> None:
    model = _model("tiny-random")
    config = ClusterConfig(prefill_workers=1, decode_workers=2, engine=EngineConfig(
        cache=CacheConfig(gpu_memory_fraction=0.9), scheduler=SchedulerConfig(max_num_seqs=8)))
    placements = plan(config, Gpus(2, H200), model)
    specs = config.specs(placements, model)
    assert [(s.role, s.config.engine.device, s.gpu_share) for s in specs] == [
        ("decode", "cuda:0", 0.5), ("decode", "cuda:1", 1.0), ("prefill", "cuda:0", 0.5)]
    assert [s.config.engine.cache.gpu_memory_fraction for s in specs] == pytest.approx([0.45, 0.9, 0.45])
    assert {s.config.engine.cache.max_pool_tokens for s in specs} == {8 * model.max_position_embeddings}
    # The process launcher's flags carry all of it to the worker process.
    args = build_parser("worker").parse_args(worker_arguments(specs[2].config))
    assert worker_config_from_args(args).engine == specs[2].config.engine


def test_engine_flags_reach_the_worker_process() -> None:
    """Graphs off and the pool settings survive the trip through the process launcher's flags,
    and the worker's engine streams ids alone."""
    from services.worker.config import WorkerConfig, worker_engine_config

    engine = EngineConfig(enforce_eager=True, cache=CacheConfig(num_blocks=32, enable_prefix_caching=False))
    sent = WorkerConfig(engine=engine)
    received = worker_config_from_args(build_parser("worker").parse_args(worker_arguments(sent)))
    assert received.engine == engine
    assert worker_engine_config(received).detokenize is False and engine.detokenize is True
