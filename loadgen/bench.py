"""One `tandem bench` invocation: load the prompts once, run each load point (a single run, a
sweep, or the probes of a capacity search), print a table per point, and write the files. A
Ctrl-C stops after the point in progress, whose partial records are kept and written."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace

from loadgen.backends import BackendConfig
from loadgen.capacity import CapacitySearch, SLOSpec
from loadgen.datasets import DatasetSpec, load_requests
from loadgen.event_loop import loop_name
from loadgen.load_pattern import LoadSpec
from loadgen.metrics import GoodputSpec, count_client_tokens, summarize_run
from loadgen.report.console import format_run, format_sweep
from loadgen.result import BenchResult, PointResult
from loadgen.self_check import client_warnings
from loadgen.sweep import SweepSpec, point_spec
from loadgen.tokens import load_token_counter

# With --duration and no --num-prompts, prompts are drawn from a pool of this many, cycled.
DURATION_POOL_SIZE = 1000


@dataclass(frozen=True)
class CapacitySpec:
    slo: SLOSpec
    dimension: str = "concurrency"
    start: float = 1.0
    maximum: float = 1024.0
    max_runs: int = 10

    def __post_init__(self) -> None:
        CapacitySearch(self.dimension, self.start, self.maximum, self.max_runs)   # validates the flags


@dataclass(frozen=True)
class OutputSpec:
    save_result: bool = False
    result_dir: str = "."
    result_filename: str | None = None
    plots: bool = True
    show_progress: bool = True


@dataclass(frozen=True)
class BenchPlan:
    backend: BackendConfig
    dataset: DatasetSpec
    load: LoadSpec
    sweep: SweepSpec | None = None
    capacity: CapacitySpec | None = None
    goodput: GoodputSpec | None = None
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)
    tokenizer: str | None = None
    num_workers: int = 1
    output: OutputSpec = field(default_factory=OutputSpec)


def run_bench(plan: BenchPlan, out=sys.stdout) -> tuple[BenchResult, list[str]]:
    """Runs the plan; returns the result and the files written."""
    counter = load_token_counter(plan.tokenizer)
    specs = plan.sweep.load_specs(plan.load) if plan.sweep else [plan.load]
    count = max((s.num_prompts or DURATION_POOL_SIZE) + s.warmup_requests for s in specs)
    if plan.capacity:
        count = (plan.load.num_prompts or DURATION_POOL_SIZE) + plan.load.warmup_requests
    requests = load_requests(plan.dataset, count, counter)
    result = BenchResult(settings=_settings(plan, counter.method), percentiles=plan.percentiles,
                         sweep_dimension=(plan.sweep.dimension if plan.sweep
                                          else plan.capacity.dimension if plan.capacity else None))
    runner = _PointRunner(plan, requests, counter, result, out)
    try:
        if plan.capacity:
            _search_capacity(plan, runner, result, out)
        else:
            for spec in specs:
                if runner.run(spec).interrupted:
                    break
    except KeyboardInterrupt:
        result.interrupted = True
    if len(result.points) > 1:
        print(format_sweep([(p.label, p.summary) for p in result.points], plan.percentiles), file=out)
    paths = []
    if plan.output.save_result and result.points:
        from loadgen.report.files import write_all
        name = plan.output.result_filename or f"bench-{plan.backend.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
        paths = write_all(result, plan.output.result_dir, name, plan.output.plots)
        print("wrote " + ", ".join(paths), file=out)
    return result, paths


class _PointRunner:
    def __init__(self, plan: BenchPlan, requests, counter, result: BenchResult, out) -> None:
        self.plan, self.requests, self.counter, self.result, self.out = plan, requests, counter, result, out
        self.backend = plan.backend

    def run(self, spec: LoadSpec) -> PointResult:
        from loadgen.workers import execute
        outcome = execute(self.backend, self.requests, spec, self.plan.num_workers, self.plan.output.show_progress)
        if self.backend.model is None and outcome.model:
            self.backend = replace(self.backend, model=outcome.model)
            self.result.settings["model_id"] = outcome.model
        count_client_tokens(outcome.records, self.counter)
        summary = summarize_run(outcome.records, self.plan.percentiles, self.plan.goodput)
        summary["client_warnings"] = client_warnings(spec, summary)
        point = PointResult(spec, summary, outcome.records, outcome.interrupted, outcome.started_at,
                            outcome.num_workers)
        self.result.points.append(point)
        self.result.interrupted = self.result.interrupted or outcome.interrupted
        print(format_run(spec.label, summary, self.plan.percentiles, self.counter.method, outcome.interrupted),
              file=self.out, flush=True)
        for warning in summary["client_warnings"]:
            print(f"WARNING ({spec.label}): {warning}", file=self.out, flush=True)
        return point


def _search_capacity(plan: BenchPlan, runner: _PointRunner, result: BenchResult, out) -> None:
    cap = plan.capacity
    search = CapacitySearch(cap.dimension, cap.start, cap.maximum, cap.max_runs)
    while (value := search.next_value()) is not None:
        point = runner.run(point_spec(plan.load, cap.dimension, value))
        if point.interrupted:
            break
        met, observed = cap.slo.evaluate(point.records)
        point.slo_met = met
        point.summary.update({f"slo_{k}": v for k, v in observed.items()})
        search.record(value, met)
        print(f"capacity probe {point.label}: SLO {'met' if met else 'NOT met'} "
              + ", ".join(f"{k}={v:.2f}" for k, v in observed.items()), file=out, flush=True)
    result.capacity = {"dimension": cap.dimension, "slo": {m: v for m, v in cap.slo.limits},
                       "slo_percentile": cap.slo.percentile, **search.summary()}
    found = result.capacity
    note = (" (the maximum tried)" if found["reached_maximum"] else "" if found["converged"]
            else f" (not converged: the smallest value that failed was {found['first_failing']}; "
                 f"raise --capacity-max-runs)" if found["first_failing"] is not None
            else " (not converged: raise --capacity-max-runs or --capacity-max)")
    print(f"capacity ({cap.dimension}) meeting the SLOs: {found['capacity']:g}{note} after {found['runs']} runs",
          file=out, flush=True)


def _settings(plan: BenchPlan, token_count_method: str) -> dict:
    b, d = plan.backend, plan.dataset
    return {"date": time.strftime("%Y%m%d-%H%M%S", time.gmtime()), "backend": b.kind, "base_url": b.base_url,
            "model_id": b.model, "tokenizer_id": plan.tokenizer, "token_count_method": token_count_method,
            "dataset_name": d.name, "dataset_path": d.path, "seed": d.seed, "ignore_eos": b.ignore_eos,
            "dataset": asdict(d),
            "goodput": None if plan.goodput is None else {k: v for k, v in vars(plan.goodput).items() if v},
            "num_workers": plan.num_workers, "event_loop": loop_name()}
