"""`tandem bench` flags: a bad value is one clear line on stderr and exit code 2, never a traceback."""

import math

import pytest

from loadgen.cli import parse_goodput, parse_percentiles, plan_from_args
from loadgen.errors import BenchConfigError
from orchestration.cli import build_parser, main


def bench(capsys, *argv):
    code = None
    try:
        code = main(["bench", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("argv, needle", [
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--max-concurrency", "abc"], "--max-concurrency"),
    (["--request-rate", "-3"], "--request-rate"),
    (["--backend", "nope"], "--backend"),
    (["--base-url", "localhost:80"], "--base-url"),
    (["--sweep", "concurrency:1,x"], "--sweep"),
    (["--slo", "ttft_ms:fast"], "--slo"),
    (["--percentiles", "50,101"], "--percentiles"),
    (["--goodput", "latency:5"], "--goodput"),
    (["--dataset-name", "sharegpt"], "--dataset-path"),
    (["--dataset-name", "custom", "--dataset-path", "/no/such/file.jsonl"], "cannot read"),
    (["--random-range-ratio", "1.5"], "--random-range-ratio"),
    (["--num-workers", "0"], "--num-workers"),
    (["--tokenizer", "/no/such/tokenizer.json"], "--tokenizer"),
    (["--slo", "ttft_ms:100", "--capacity-start", "0"], "--capacity-start"),
    (["--slo", "ttft_ms:100", "--capacity-max-runs", "0"], "--capacity-max-runs"),
    (["--ramp-up", "1", "--request-rate", "5"], "--ramp-up"),
])
def test_bad_flags_are_one_line_exit_2(capsys, argv, needle):
    code, err = bench(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def parse(*argv):
    return build_parser(["bench", *argv]).parse_args(["bench", *argv])


def test_plan_from_flags():
    plan = plan_from_args(parse("--backend", "tandem", "--max-concurrency", "8", "--random-input-len", "32",
                                "--goodput", "ttft:500", "tpot:50", "--percentiles", "50,99.9",
                                "--warmup-requests", "4", "--ramp-up", "0.5"))
    assert plan.backend.base_url == "127.0.0.1:50051"             # where `tandem serve` listens by default
    assert plan.load.max_concurrency == 8 and math.isinf(plan.load.request_rate) and plan.load.num_prompts == 1000
    assert plan.goodput.ttft_ms == 500 and plan.goodput.tpot_ms == 50 and plan.goodput.e2el_ms is None
    assert plan.percentiles == (50.0, 99.9) and plan.dataset.random_input_len == 32


def test_duration_bound_run_has_no_prompt_count():
    plan = plan_from_args(parse("--duration", "5", "--request-rate", "3"))
    assert plan.load.num_prompts is None and plan.load.duration_s == 5


def test_a_sweep_supplies_its_dimension_to_a_duration_bound_run():
    plan = plan_from_args(parse("--sweep", "concurrency:1,32,256", "--duration", "15"))
    assert [p.max_concurrency for p in plan.sweep.load_specs(plan.load)] == [1, 32, 256]
    assert all(p.duration_s == 15 and p.num_prompts is None for p in plan.sweep.load_specs(plan.load))
    plan = plan_from_args(parse("--sweep", "rate:2,4", "--duration", "3", "--max-concurrency", "8"))
    assert [(p.request_rate, p.max_concurrency) for p in plan.sweep.load_specs(plan.load)] == [(2, 8), (4, 8)]
    plan = plan_from_args(parse("--sweep", "concurrency:4,8", "--ramp-up", "0.5"))
    assert all(p.ramp_up_s == 0.5 for p in plan.sweep.load_specs(plan.load))
    with pytest.raises(BenchConfigError, match="--duration"):      # still refused without a sweep
        plan_from_args(parse("--duration", "15"))


def test_a_capacity_search_supplies_its_dimension_to_a_duration_bound_run():
    plan = plan_from_args(parse("--slo", "ttft_ms:1000,tpot_ms:40,p:90", "--capacity-search", "rate",
                                "--capacity-start", "0.5", "--duration", "20"))
    assert plan.load.request_rate == 0.5 and plan.load.duration_s == 20
    plan = plan_from_args(parse("--slo", "ttft_ms:500", "--capacity-search", "concurrency",
                                "--capacity-start", "4", "--duration", "20"))
    assert plan.load.max_concurrency == 4
    with pytest.raises(BenchConfigError, match="--duration"):      # still refused without either
        plan_from_args(parse("--duration", "15"))


def test_sweep_and_slo_exclude_each_other():
    with pytest.raises(BenchConfigError, match="--sweep"):
        plan_from_args(parse("--sweep", "concurrency:1,2", "--slo", "ttft_ms:100"))


def test_parsers():
    assert parse_percentiles("50, 90,99") == (50.0, 90.0, 99.0)
    assert parse_goodput(["e2e:100"]).e2el_ms == 100
    assert parse_goodput(None) is None
