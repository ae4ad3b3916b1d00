"""Overload soak: a `tandem serve` child process (process launcher, tiny model, a small KV pool)
under ten times the load it can hold, for 60 s over HTTP. The server's capacity is measured first
(completions per second with as many clients as it runs at once); then requests arrive open loop
at ten times that rate (--arrival open), or ten times as many clients as it holds each retry a
429 at once (--arrival closed: the clients' own queueing then dominates the latency). Prints what came back (completions, 429s, anything else),
the refusals' latency from send to answer (and the share within 50 ms), the completions' latency,
the server's memory (RSS of the serve process and its workers) before and after, and whether an
idle request is served normally once the load stops.

    python benchmarks/overload_soak.py                       # 60 s, 160 clients against 16 slots
    python benchmarks/overload_soak.py --duration 20 --mode colocated
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestration.commands.demo import ServeProcess  # noqa: E402
from tests.helpers.overload import closed_loop, open_loop  # noqa: E402


def tree_rss_bytes(root_pid: int) -> int:
    """RSS of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


async def soak(a: argparse.Namespace, url: str, pid: int) -> dict:
    clients = a.overload * a.max_num_seqs
    capacity = await closed_loop(url, a.max_num_seqs, a.warmup, a.max_tokens)
    capacity_per_s = capacity.completed / capacity.duration_s
    rss_before = tree_rss_bytes(pid)
    if a.arrival == "open":
        run = await open_loop(url, a.overload * capacity_per_s, a.duration, a.max_tokens)
    else:
        run = await closed_loop(url, clients, a.duration, a.max_tokens)
    await asyncio.sleep(2.0)          # queued requests drain, workers report
    rss_after = tree_rss_bytes(pid)
    idle = await closed_loop(url, 1, 2.0, a.max_tokens)
    within_50ms = sum(x <= 0.050 for x in run.refused_latency_s)
    # A refusal comes at once (queue full, or no room even after the queue wait), or when a queued
    # request's wait ends (queue_timeout_s after arrival): tell them apart by when they came.
    at_once = sorted(x for x in run.refused_latency_s if x < a.queue_timeout * 0.9)
    return {"arrival": a.arrival, "capacity_per_s": round(capacity_per_s, 2),
            "offered_per_s": round(a.overload * capacity_per_s, 2) if a.arrival == "open" else None,
            "clients": clients if a.arrival == "closed" else None, "held": a.max_num_seqs, "max_queued": a.max_queued,
            "queue_timeout_s": a.queue_timeout, **run.summary(),
            "completed_per_s": round(run.completed / run.duration_s, 2),
            "refused_within_50ms": round(within_50ms / max(1, run.refused), 4),
            "refused_at_once": len(at_once),
            "at_once_p50_ms": round(1000 * at_once[len(at_once) // 2], 1) if at_once else None,
            "at_once_p99_ms": round(1000 * at_once[int(0.99 * (len(at_once) - 1))], 1) if at_once else None,
            "at_once_within_50ms": round(sum(x <= 0.050 for x in at_once) / max(1, len(at_once)), 4),
            "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "rss_before_mib": rss_before >> 20, "rss_after_mib": rss_after >> 20,
            "after_load": idle.summary()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--mode", default="disaggregated", choices=("colocated", "disaggregated"))
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--arrival", default="open", choices=("open", "closed"))
    p.add_argument("--overload", type=int, default=10,
                   help="open: times the measured capacity; closed: clients per request the server holds")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--num-kv-blocks", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-queued", type=int, default=16, help="the gateway's admission queue")
    p.add_argument("--queue-timeout", type=float, default=1.0)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serve = ServeProcess(argparse.Namespace(model=a.model, mode=a.mode, launcher="process",
                                                startup_timeout=a.startup_timeout, result_dir=tmp))
        serve.argv += ["--num-kv-blocks", str(a.num_kv_blocks), "--max-num-seqs", str(a.max_num_seqs),
                       "--max-model-len", "64", "--max-queued-requests", str(a.max_queued),
                       "--queue-timeout", str(a.queue_timeout)]
        with serve:
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            result = asyncio.run(soak(a, f"http://127.0.0.1:{serve.http_port}", serve._proc.pid))
            alive = serve._proc.poll() is None
    print(json.dumps({"date": started, "mode": a.mode, "server_alive_at_end": alive, **result}, indent=1))


if __name__ == "__main__":
    main()
