"""Capacity search end to end: a target that serves at most 6 streams at once (the rest wait,
which shows as TTFT) must be found to hold exactly 6 under a TTFT SLO."""

import io
import json

from loadgen.backends import BackendConfig
from loadgen.bench import BenchPlan, CapacitySpec, OutputSpec, run_bench
from loadgen.capacity import parse_slo
from loadgen.datasets import DatasetSpec
from loadgen.load_pattern import LoadSpec
from tests.loadgen_target.process import TargetProcess

SLOTS = 6


def test_capacity_search_finds_the_targets_slot_count(tmp_path):
    # A request holds a slot 250 ms (TTFT 200 ms + 2 x 25 ms); beyond 6 streams one request in
    # each round of the lock-step closed loop waits a whole round for a slot (p90 TTFT 425-440 ms
    # at 7 and 8 streams, 203-206 ms up to 6). The SLO, 300 ms, sits 100 ms from both: a busy
    # machine's wake-up delays stay far inside it (a 38 ms SLO over a 30 ms TTFT did not).
    with TargetProcess(ttft_ms=200, itl_ms=25, max_active=SLOTS, no_grpc=True) as target:
        plan = BenchPlan(backend=BackendConfig("openai", target.http_url),
                         dataset=DatasetSpec(random_input_len=8, random_output_len=3),
                         load=LoadSpec(num_prompts=28, request_timeout_s=10),
                         capacity=CapacitySpec(parse_slo("ttft_ms:300,p:90"), "concurrency", 1, 64, 8),
                         output=OutputSpec(save_result=True, result_dir=str(tmp_path), result_filename="cap",
                                           show_progress=False))
        result, paths = run_bench(plan, out=io.StringIO())
    assert result.capacity["capacity"] == SLOTS and result.capacity["converged"]
    assert [p["value"] for p in result.capacity["probes"]] == [1, 2, 4, 8, 6, 7]
    doc = json.loads((tmp_path / "cap.json").read_text())
    assert doc["capacity"]["capacity"] == SLOTS
    assert [r["slo_met"] for r in doc["runs"]] == [True, True, True, False, True, False]
    assert any(p.endswith(".png") for p in paths)
