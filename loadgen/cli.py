"""`tandem bench` flags (vLLM `bench serve` names where the meaning is the same) and their
translation into a BenchPlan. Every bad value becomes one line naming the flag, exit code 2."""

from __future__ import annotations

import argparse
import math
import sys

from loadgen.backends.base import BACKEND_KINDS, DEFAULT_TARGETS, BackendConfig
from loadgen.bench import BenchPlan, CapacitySpec, OutputSpec, run_bench
from loadgen.capacity import parse_slo
from loadgen.datasets import DATASET_NAMES, DatasetSpec
from loadgen.errors import BenchConfigError
from loadgen.load_pattern import LoadSpec
from loadgen.metrics import GOODPUT_KEYS, GoodputSpec
from loadgen.sweep import parse_sweep, point_spec

DEFAULT_NUM_PROMPTS = 1000


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """argparse prints usage + error; a bench user wants the one line that names the flag."""
    def error(message: str):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
    parser.error = error


def add_arguments(p: argparse.ArgumentParser) -> None:
    one_line_errors(p)
    t = p.add_argument_group("target")
    t.add_argument("--backend", default="openai", help=f"{' | '.join(BACKEND_KINDS)} (default openai)")
    t.add_argument("--base-url", "--target", dest="base_url", default=None,
                   help="server address: http://host:port for openai*, host:port for tandem "
                        "(default: where `tandem serve` listens)")
    t.add_argument("--endpoint", default=None, help="HTTP path (default /v1/completions or /v1/chat/completions)")
    t.add_argument("--model", default=None, help="model name (default: the first the server lists)")
    t.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY' (HTTP header / gRPC metadata)")
    t.add_argument("--tokenizer", default=None,
                   help="the server's tokenizer, for exact token counts: a Tandem preset (tiny-random), a "
                        "checkpoint dir or a tokenizer.json (default: an approximation, reported as such)")
    t.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default 600)")
    t.add_argument("--ignore-eos", action="store_true", help="ask the server to generate exactly the output length")
    t.add_argument("--temperature", type=float, default=None)

    load = p.add_argument_group("load")
    load.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most (closed loop)")
    load.add_argument("--request-rate", type=float, default=math.inf,
                      help="requests/s, open loop (default inf: as fast as --max-concurrency allows)")
    load.add_argument("--burstiness", type=float, default=1.0,
                      help="gamma shape of arrival gaps: 1 = Poisson, < 1 burstier, > 1 more even")
    load.add_argument("--num-prompts", type=int, default=None,
                      help=f"measured requests per run (default {DEFAULT_NUM_PROMPTS}, or unbounded with --duration)")
    load.add_argument("--duration", type=float, default=None, help="seconds per run (after warm-up)")
    load.add_argument("--warmup-requests", type=int, default=0, help="requests sent first and left out of the metrics")
    load.add_argument("--ramp-up", type=float, default=0.0,
                      help="closed loop: start the slots evenly over this many seconds (no lock-step herd)")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--num-workers", type=int, default=1,
                      help="client processes that split the load (for thousands of streams)")
    load.add_argument("--sweep", default=None, help="concurrency:1,2,4,... or rate:1,2,4,... (one run each)")
    load.add_argument("--slo", default=None,
                      help="capacity search: e.g. ttft_ms:500,tpot_ms:50,p:99 finds the largest load meeting it")
    load.add_argument("--capacity-search", choices=("concurrency", "rate"), default="concurrency")
    load.add_argument("--capacity-start", type=float, default=1.0)
    load.add_argument("--capacity-max", type=float, default=1024.0)
    load.add_argument("--capacity-max-runs", type=int, default=10)

    d = p.add_argument_group("data")
    d.add_argument("--dataset-name", default="random", help=" | ".join(DATASET_NAMES))
    d.add_argument("--dataset-path", default=None)
    d.add_argument("--random-input-len", type=int, default=1024)
    d.add_argument("--random-output-len", type=int, default=128)
    d.add_argument("--random-range-ratio", type=float, default=0.0)
    d.add_argument("--random-prefix-len", type=int, default=0)
    d.add_argument("--sharegpt-output-len", type=int, default=None)
    d.add_argument("--custom-output-len", type=int, default=256)
    d.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    d.add_argument("--prefix-repetition-suffix-len", type=int, default=256)
    d.add_argument("--prefix-repetition-num-prefixes", type=int, default=10)
    d.add_argument("--prefix-repetition-output-len", type=int, default=128)

    m = p.add_argument_group("metrics and output")
    m.add_argument("--percentiles", "--metric-percentiles", dest="percentiles", default="50,90,99")
    m.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS", help="e.g. ttft:500 tpot:50 e2el:2000")
    m.add_argument("--save-result", action="store_true", help="write JSON, CSV, PNG (sweeps) and HTML")
    m.add_argument("--result-dir", default=".")
    m.add_argument("--result-filename", default=None, help="base name of the files (no extension)")
    m.add_argument("--no-plots", action="store_true")
    m.add_argument("--no-progress", "--disable-tqdm", dest="no_progress", action="store_true")


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchConfigError("--percentiles", f"expected numbers like 50,90,99, got {text!r}") from None
    if any(not 0 < v <= 100 for v in values):
        raise BenchConfigError("--percentiles", f"each must be in (0, 100], got {text!r}")
    return values


def parse_goodput(items: list[str] | None) -> GoodputSpec | None:
    if not items:
        return None
    limits = {}
    for item in items:
        key, sep, value = item.partition(":")
        key = {"e2e": "e2el"}.get(key.removesuffix("_ms"), key.removesuffix("_ms"))
        if not sep or key not in GOODPUT_KEYS:
            raise BenchConfigError("--goodput", f"expected {':MS, '.join(GOODPUT_KEYS)}:MS items, got {item!r}")
        try:
            limits[f"{key}_ms"] = float(value)
        except ValueError:
            raise BenchConfigError("--goodput", f"{key} must be a number of ms, got {value!r}") from None
    return GoodputSpec(**limits)


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    if args.num_workers < 1:
        raise BenchConfigError("--num-workers", f"must be >= 1, got {args.num_workers}")
    if args.sweep and args.slo:
        raise BenchConfigError("--sweep", "cannot be combined with --slo (a capacity search picks its own points)")
    backend = BackendConfig(kind=args.backend, base_url=args.base_url or DEFAULT_TARGETS.get(args.backend, ""),
                            model=args.model, api_key=args.api_key, endpoint=args.endpoint,
                            ignore_eos=args.ignore_eos, temperature=args.temperature)
    dataset = DatasetSpec(name=args.dataset_name, path=args.dataset_path, random_input_len=args.random_input_len,
                          random_output_len=args.random_output_len, random_range_ratio=args.random_range_ratio,
                          random_prefix_len=args.random_prefix_len, sharegpt_output_len=args.sharegpt_output_len,
                          custom_output_len=args.custom_output_len, prefix_len=args.prefix_repetition_prefix_len,
                          suffix_len=args.prefix_repetition_suffix_len,
                          num_prefixes=args.prefix_repetition_num_prefixes,
                          prefix_output_len=args.prefix_repetition_output_len, seed=args.seed)
    num_prompts = args.num_prompts
    if num_prompts is None and args.duration is None:
        num_prompts = DEFAULT_NUM_PROMPTS
    sweep = parse_sweep(args.sweep) if args.sweep else None
    max_concurrency, request_rate = args.max_concurrency, args.request_rate
    if sweep is not None:
        max_concurrency, request_rate = sweep.base_pattern(max_concurrency, request_rate)
    capacity = None
    if args.slo:
        capacity = CapacitySpec(parse_slo(args.slo), args.capacity_search, args.capacity_start,
                                args.capacity_max, args.capacity_max_runs)
    if sweep is None and capacity is not None:
        # The base load is validated as the search's first probe, which sets its own dimension.
        first = point_spec(LoadSpec(max_concurrency=max_concurrency, request_rate=request_rate,
                                    num_prompts=num_prompts or 1), args.capacity_search,
                           args.capacity_start)
        max_concurrency, request_rate = first.max_concurrency, first.request_rate
    load = LoadSpec(max_concurrency=max_concurrency, request_rate=request_rate,
                    burstiness=args.burstiness, num_prompts=num_prompts, duration_s=args.duration,
                    warmup_requests=args.warmup_requests, request_timeout_s=args.request_timeout, seed=args.seed,
                    ramp_up_s=args.ramp_up)
    output = OutputSpec(save_result=args.save_result, result_dir=args.result_dir,
                        result_filename=args.result_filename, plots=not args.no_plots,
                        show_progress=not args.no_progress)
    return BenchPlan(backend=backend, dataset=dataset, load=load,
                     sweep=sweep, capacity=capacity,
                     goodput=parse_goodput(args.goodput), percentiles=parse_percentiles(args.percentiles),
                     tokenizer=args.tokenizer, num_workers=args.num_workers, output=output)


def run(args: argparse.Namespace) -> int:
    result, _ = run_bench(plan_from_args(args))
    return 130 if result.interrupted else 0
