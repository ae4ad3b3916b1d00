"""Client capacity of the load generator: how many concurrent streams and streamed tokens/s it
sustains without its own overhead showing in the metrics.

The load-test target (tests/loadgen_target) runs in its own process with injected delays; the
client runs a closed loop at --streams concurrency. The client's overhead would show as measured
TTFT / ITL above the injected values and as time queued in the client; both are reported beside
the achieved token rate and each process's CPU use. CPU only; the machine's core count is printed.

    python benchmarks/loadgen_capacity.py --streams 2000 --itl-ms 100 --tokens 60 --duration 20
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadgen.backends import BackendConfig  # noqa: E402
from loadgen.datasets import DatasetSpec, load_requests  # noqa: E402
from loadgen.load_pattern import LoadSpec  # noqa: E402
from loadgen.metrics import count_client_tokens, summarize_run  # noqa: E402
from loadgen.tokens import ApproximateCounter  # noqa: E402
from loadgen.workers import execute  # noqa: E402
from tests.loadgen_target.process import TargetProcess  # noqa: E402


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--ttft-ms", type=float, default=200.0)
    p.add_argument("--itl-ms", type=float, default=100.0)
    p.add_argument("--tokens", type=int, default=60, help="output tokens per request")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--backend", default="openai", choices=("openai", "openai-chat", "tandem"))
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--target-loop", default="precise", choices=("precise", "uvloop", "asyncio"))
    a = p.parse_args()

    counter = ApproximateCounter()
    requests = load_requests(DatasetSpec(random_input_len=16, random_output_len=a.tokens), 1000, counter)
    with TargetProcess(ttft_ms=a.ttft_ms, itl_ms=a.itl_ms, loop=a.target_loop,
                       no_grpc=a.backend != "tandem") as target:
        url = target.grpc_address if a.backend == "tandem" else target.http_url
        # The ramp spreads the slots' first sends over one request's length, so requests start
        # (and tokens fall due) evenly, as independent users' would, not as a herd every round.
        request_s = (a.ttft_ms + (a.tokens - 1) * a.itl_ms) / 1e3
        spec = LoadSpec(max_concurrency=a.streams, num_prompts=None, duration_s=a.duration,
                        warmup_requests=a.streams, ramp_up_s=request_s, request_timeout_s=120)
        cpu0, target_cpu0, t0 = own_cpu_s(), process_cpu_s(target.pid), time.perf_counter()
        outcome = execute(BackendConfig(a.backend, url, ignore_eos=True), requests, spec,
                          num_workers=a.num_workers, show_progress=False)
        wall = time.perf_counter() - t0
        client_cpu, target_cpu = own_cpu_s() - cpu0, process_cpu_s(target.pid) - target_cpu0
    count_client_tokens(outcome.records, counter)
    s = summarize_run(outcome.records, (50.0, 99.0))
    # Steady state: every token that arrived (warm-up streams' too) during the measured window.
    window_start = min(r.scheduled for r in outcome.records if not r.warmup)
    window_end = window_start + a.duration
    tokens_in_window = sum(1 for r in outcome.records for t in r.chunk_times if window_start <= t < window_end)
    print(f"cores: {os.cpu_count()}  backend: {a.backend}  client workers: {outcome.num_workers}  "
          f"target loop: {a.target_loop}")
    print(f"streams asked {a.streams}, max in flight observed {s['max_concurrency_observed']}")
    print(f"completed {s['completed']} failed {s['failed']} {s['errors_by_code'] or ''}")
    print(f"streamed tokens/s received, steady {a.duration:g} s window: {tokens_in_window / a.duration:,.0f}")
    print(f"output_throughput (tok/s, completed measured requests): {s['output_throughput']:,.0f}")
    print(f"TTFT injected {a.ttft_ms:g} ms: median {s['median_ttft_ms']:.2f}  p99 {s['p99_ttft_ms']:.2f}")
    print(f"ITL  injected {a.itl_ms:g} ms: median {s['median_itl_ms']:.2f}  mean {s['mean_itl_ms']:.2f}  "
          f"p99 {s['p99_itl_ms']:.2f}")
    print(f"time queued in client: median {s['median_queue_ms']:.3f} ms  p99 {s['p99_queue_ms']:.3f} ms")
    print(f"CPU over {wall:.1f} s wall: client {client_cpu:.1f} s ({100 * client_cpu / wall:.0f}% of a core), "
          f"target {target_cpu:.1f} s ({100 * target_cpu / wall:.0f}%)")


if __name__ == "__main__":
    main()
