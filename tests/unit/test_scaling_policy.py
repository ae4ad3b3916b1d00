"""The scaling policy on simulated signal traces: it adds the role that is short, removes workers
when idle, waits out its cool-downs, needs a condition to persist, and never flips back and forth
under a steady or noisy load."""

import dataclasses

import pytest

from orchestration.scaling_policy import (RoleLimits, ScalingPolicy, ScalingPolicyConfig,
                                          ScalingSignals)
from services.engine.errors import ConfigError

CONFIG = ScalingPolicyConfig(prefill=RoleLimits(1, 4), decode=RoleLimits(1, 4), sustain_ticks=3,
                             up_cooldown_s=10.0, down_cooldown_s=30.0)


class Fleet:
    """Applies the policy's decisions to worker counts, one tick a second."""

    def __init__(self, config=CONFIG, prefill=1, decode=1):
        self.policy = ScalingPolicy(config)
        self.counts = {"prefill": prefill, "decode": decode}
        self.decisions = []
        self.t = 0.0

    def tick(self, **signals):
        s = ScalingSignals(now=self.t, prefill_workers=self.counts["prefill"],
                           decode_workers=self.counts["decode"], **signals)
        for d in self.policy.decide(s):
            self.counts[d.role] += 1 if d.direction == "up" else -1
            self.decisions.append((self.t, d.role, d.direction, d.reason))
        self.t += 1.0

    def run(self, seconds, **signals):
        for _ in range(int(seconds)):
            self.tick(**signals)


def test_prefill_pressure_adds_prefill_workers_only_after_it_persists_and_between_cooldowns():
    f = Fleet()
    f.run(2, prefill_wait_s=2.0, prefill_queued_tokens=5000)
    assert f.decisions == []                           # two ticks: not yet sustained
    f.run(40, prefill_wait_s=2.0, prefill_queued_tokens=5000)
    times = [t for t, role, direction, reason in f.decisions]
    assert [(r, d, why) for _, r, d, why in f.decisions] == [("prefill", "up", "prefill_queue")] * 3
    assert times[0] == 2.0
    assert all(b - a >= CONFIG.up_cooldown_s for a, b in zip(times, times[1:]))
    assert f.counts == {"prefill": 4, "decode": 1}     # capped at max


def test_decode_pressure_adds_decode_workers_and_names_the_signal():
    f = Fleet()
    f.run(5, kv_utilization=0.95)
    f.t += 20
    f.run(5, running_fraction=1.0, kv_utilization=0.5)
    f.t += 20
    f.run(5, tpot_attainment=0.5, kv_utilization=0.5)
    assert [(r, d, why) for _, r, d, why in f.decisions] == [
        ("decode", "up", "decode_kv"), ("decode", "up", "decode_running"), ("decode", "up", "tpot_slo")]
    assert f.counts["prefill"] == 1


def test_ttft_misses_add_prefill_only_when_prompts_are_queued():
    f = Fleet()
    f.run(10, ttft_attainment=0.2)                     # slow first tokens, nothing queued: not prefill
    assert not [d for d in f.decisions if d[1] == "prefill"]
    f.run(10, ttft_attainment=0.2, prefill_queued_tokens=800)
    assert ("prefill", "up", "ttft_slo") in [d[1:] for d in f.decisions]


def test_idle_removes_workers_down_to_the_minimum_after_the_longer_cooldown():
    f = Fleet(prefill=3, decode=3)
    f.run(200, prefill_wait_s=0.0, kv_utilization=0.05, running_fraction=0.05)
    downs = [d for d in f.decisions if d[2] == "down"]
    assert f.counts == {"prefill": 1, "decode": 1}
    assert {d[3] for d in downs} == {"idle"}
    for role in ("prefill", "decode"):
        times = [t for t, r, _, _ in downs if r == role]
        assert all(b - a >= CONFIG.down_cooldown_s for a, b in zip(times, times[1:]))


def test_no_scale_down_when_the_rest_would_be_pressed():
    # Two decode workers, both signals at their down thresholds; one worker alone would carry
    # 56% KV (under 85%: fine) but a 60% full batch (over the 50% up threshold): both stay.
    config = dataclasses.replace(CONFIG, running_per_worker_up=0.5, running_per_worker_down=0.3)
    f = Fleet(config, decode=2)
    f.run(100, kv_utilization=0.28, running_fraction=0.3)
    assert f.counts["decode"] == 2 and f.decisions == []


def test_a_load_that_rises_then_falls_scales_up_then_down():
    f = Fleet()
    f.run(30, prefill_wait_s=0.0)
    f.run(60, prefill_wait_s=3.0, prefill_queued_tokens=9000, kv_utilization=0.9)
    peak = dict(f.counts)
    f.run(200, prefill_wait_s=0.0, kv_utilization=0.1, running_fraction=0.1)
    assert peak["prefill"] > 1 and peak["decode"] > 1
    assert f.counts == {"prefill": 1, "decode": 1}
    directions = [d[2] for d in f.decisions]
    assert directions == sorted(directions, reverse=True)   # every "up" before every "down"


def test_a_load_that_dips_between_requests_keeps_its_workers_until_it_is_gone():
    # Two decode workers under two long requests: each tick sees both (46% of the KV) except
    # when one ends and the next starts (23%, under the 30% down threshold, twice in a row).
    # Judged on one sample that is idle; over the window it is not, and one worker alone would
    # carry 92% (over the 85% up threshold). Once the load is gone for the window, one goes.
    f = Fleet(decode=2)
    f.t = 100.0                                        # long past any cool-down
    for i in range(120):
        f.tick(kv_utilization=0.23 if i % 5 in (3, 4) else 0.46, running_fraction=0.06)
    assert f.decisions == []
    f.run(CONFIG.down_window_s - 1, kv_utilization=0.0)
    assert f.decisions == []                           # the window still holds the load
    f.run(3, kv_utilization=0.0)
    assert [d[1:] for d in f.decisions] == [("decode", "down", "idle")]


def test_the_window_counts_load_in_workers_worth_across_a_change_of_fleet():
    # One worker at 90% KV earlier in the window is 45% of each of two: not idle, though every
    # sample since the second joined reads 25%. At 50% of one worker (25% of two) it is idle.
    config = dataclasses.replace(CONFIG, kv_utilization_down=0.3, down_cooldown_s=0.0)
    for before, removed in ((0.9, []), (0.5, [("decode", "down", "idle")])):
        f = Fleet(config, decode=1)
        f.run(2, kv_utilization=before)
        f.counts["decode"] = 2
        f.run(4, kv_utilization=0.25)
        assert [d[1:] for d in f.decisions] == removed


def test_no_flapping_under_a_noisy_steady_load():
    # The load hovers around the up threshold: one tick over, one under, never sustained.
    f = Fleet()
    for i in range(300):
        over = i % 2 == 0
        f.tick(prefill_wait_s=0.6 if over else 0.4, prefill_queued_tokens=100,
               kv_utilization=0.86 if over else 0.8)
    assert f.decisions == []


def test_no_flip_flop_when_a_load_sits_between_the_thresholds():
    f = Fleet(prefill=2, decode=2)
    f.run(300, prefill_wait_s=0.2, prefill_queued_tokens=100, kv_utilization=0.6, running_fraction=0.5)
    assert f.decisions == []


def test_queued_requests_block_scale_down_and_a_dead_worker_is_replaced_at_once():
    f = Fleet(prefill=2, decode=2)
    f.run(100, queued_requests=3, prefill_queued_tokens=10, kv_utilization=0.1)
    assert not [d for d in f.decisions if d[2] == "down"]
    f = Fleet(ScalingPolicyConfig(prefill=RoleLimits(2, 4), decode=RoleLimits(1, 4)), prefill=1)
    f.tick()
    assert f.decisions == [(0.0, "prefill", "up", "below_min")]


@pytest.mark.parametrize("kwargs, field", [
    ({"prefill": RoleLimits(1, 1), "prefill_wait_down_s": 1.0, "prefill_wait_up_s": 0.5}, "prefill_wait_down_s"),
    ({"kv_utilization_down": 0.9}, "kv_utilization_down"),
    ({"sustain_ticks": 0}, "sustain_ticks"),
])
def test_bad_config_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ScalingPolicyConfig(**kwargs)


def test_role_limits_are_validated():
    with pytest.raises(ConfigError, match="min workers"):
        RoleLimits(0, 2)
    with pytest.raises(ConfigError, match="max workers"):
        RoleLimits(3, 2)


def test_colocated_scales_decode_only():
    f = Fleet(ScalingPolicyConfig(prefill=None, decode=RoleLimits(1, 3)), prefill=0)
    f.run(20, kv_utilization=0.95, prefill_wait_s=5.0)
    assert {d[1] for d in f.decisions} == {"decode"} and f.counts["prefill"] == 0
