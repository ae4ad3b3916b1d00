"""Command-line form of a worker (`python -m services.prefill`, `python -m services.decode`): the
flags, the config they build, and the process's life from start to SIGINT / SIGTERM.

Once listening, the worker prints one line `LISTENING <host:port>` on stdout (launchers read the
bound address from it when they asked for port 0)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.errors import ConfigError, TandemError
from services.kvtransfer import TRANSPORTS, TransferConfig
from services.security.cluster_token import read_token_file
from services.security.exposure import is_loopback
from services.worker.config import WorkerConfig

_ENGINE, _CACHE, _SCHED, _WORKER = EngineConfig(), CacheConfig(), SchedulerConfig(), WorkerConfig()
LISTENING = "LISTENING"


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=_ENGINE.model, help="preset name or HF checkpoint directory")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--seed", type=int, default=_ENGINE.seed)
    p.add_argument("--block-size", type=int, default=_CACHE.block_size)
    p.add_argument("--num-kv-blocks", type=int, default=None, help="default: what the memory budget holds")
    p.add_argument("--kv-cpu-budget-bytes", type=int, default=_CACHE.cpu_budget_bytes)
    p.add_argument("--gpu-memory-fraction", type=float, default=_CACHE.gpu_memory_fraction,
                   help="of the card's total memory, weights included (tandem serve splits it "
                        "between the workers that share a card)")
    p.add_argument("--gpu-memory-bytes", type=int, default=None,
                   help="a worker's GPU budget in bytes, weights included (instead of the fraction)")
    p.add_argument("--max-pool-tokens", type=int, default=None,
                   help="the most tokens a KV pool need hold (default: what the memory budget holds)")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--max-num-seqs", type=int, default=_SCHED.max_num_seqs)
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens per engine step (default: 8192 on a GPU, 2048 on the CPU)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--scheduler-policy", default=_SCHED.policy, choices=("fcfs", "shortest_prompt_first"))
    p.add_argument("--enforce-eager", action="store_true",
                   help="no CUDA graphs: every step runs eagerly")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model, dtype=args.dtype, device=args.device, seed=args.seed,
        enforce_eager=args.enforce_eager,
        cache=CacheConfig(block_size=args.block_size, num_blocks=args.num_kv_blocks,
                          cpu_budget_bytes=args.kv_cpu_budget_bytes,
                          gpu_memory_fraction=args.gpu_memory_fraction,
                          gpu_memory_bytes=args.gpu_memory_bytes, max_pool_tokens=args.max_pool_tokens,
                          enable_prefix_caching=not args.no_prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens,
                                  policy=args.scheduler_policy, max_model_len=args.max_model_len))


def engine_arguments(config: EngineConfig) -> list[str]:
    """The flags that rebuild config in another process (the inverse of engine_config_from_args)."""
    cache, sched = config.cache, config.scheduler
    args = ["--model", config.model, "--seed", str(config.seed), "--block-size", str(cache.block_size),
            "--kv-cpu-budget-bytes", str(cache.cpu_budget_bytes),
            "--gpu-memory-fraction", str(cache.gpu_memory_fraction),
            "--max-num-seqs", str(sched.max_num_seqs),
            "--scheduler-policy", sched.policy]
    for flag, value in (("--dtype", config.dtype), ("--device", config.device),
                        ("--num-kv-blocks", cache.num_blocks), ("--max-model-len", sched.max_model_len),
                        ("--max-num-batched-tokens", sched.max_num_batched_tokens),
                        ("--gpu-memory-bytes", cache.gpu_memory_bytes),
                        ("--max-pool-tokens", cache.max_pool_tokens)):
        if value is not None:
            args += [flag, str(value)]
    if not cache.enable_prefix_caching:
        args.append("--no-prefix-caching")
    if config.enforce_eager:
        args.append("--enforce-eager")
    return args


def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--advertise-host", default="",
                   help="the host name others reach this worker by (default: --host)")
    p.add_argument("--kv-port", type=int, default=0,
                   help="decode: where KVTransfer listens for pages (0 picks a free port)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (0 picks a free one)")
    p.add_argument("--worker-id", default="")
    p.add_argument("--colocated", action="store_true", help="decode: also runs prefills (reported role)")
    p.add_argument("--kv-transport", default="", choices=("", *TRANSPORTS),
                   help="prefill: default transport when a request names none (empty: by locality)")
    p.add_argument("--reservation-ttl", type=float, default=_WORKER.reservation_ttl_s)
    p.add_argument("--engine-process", action="store_true",
                   help="run the engine in a process of its own, away from the gRPC server's "
                        "interpreter lock (on a GPU: colocated workers only)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when stdin closes (set by launchers, so no worker outlives them)")
    p.add_argument("--cluster-token-file", default=None, metavar="PATH",
                   help="a shared secret every call to this worker must carry, and that it sends")
    p.add_argument("--insecure", action="store_true",
                   help="listen beyond loopback without --cluster-token-file")
    p.add_argument("--log-level", default="INFO")
    add_engine_arguments(p)


def worker_arguments(config: WorkerConfig) -> list[str]:
    args = ["--worker-id", config.worker_id, "--kv-transport", config.kv_transport,
            "--advertise-host", config.advertise_host, "--kv-port", str(config.kv_port),
            *(["--metrics-port", str(config.metrics_port)] if config.metrics_port is not None else []),
            "--reservation-ttl", str(config.reservation_ttl_s)]
    if config.colocated:
        args.append("--colocated")
    if config.engine_process:
        args.append("--engine-process")
    return args + engine_arguments(config.engine)


def worker_config_from_args(args: argparse.Namespace) -> WorkerConfig:
    token = read_token_file(args.cluster_token_file) if args.cluster_token_file else ""
    if not token and not args.insecure and not is_loopback(args.host):
        raise ConfigError(f"--host {args.host} listens beyond loopback: give --cluster-token-file "
                          "PATH (or --insecure to accept calls without a token)")
    return WorkerConfig(engine=engine_config_from_args(args), worker_id=args.worker_id,
                        advertise_host=args.advertise_host, kv_port=args.kv_port,
                        metrics_port=args.metrics_port,
                        colocated=args.colocated, kv_transport=args.kv_transport,
                        reservation_ttl_s=args.reservation_ttl, engine_process=args.engine_process,
                        transfer=TransferConfig(cluster_token=token))


async def _serve(worker, host: str, port: int, exit_with_parent: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if exit_with_parent:
        def watch_stdin() -> None:
            # The raw descriptor, not sys.stdin: a daemon thread blocked inside the buffered
            # reader holds its lock, and interpreter shutdown then aborts on that lock.
            while os.read(sys.stdin.fileno(), 4096):     # b"" at EOF: the launcher is gone
                pass
            with contextlib.suppress(RuntimeError):      # the loop may have closed already
                loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()
    address = await worker.start(host, port)
    print(f"{LISTENING} {address}", flush=True)
    try:
        await stop.wait()
    finally:
        await worker.stop()


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    add_worker_arguments(parser)
    return parser


def main(make_worker: Callable[[WorkerConfig], object], prog: str, argv: list[str] | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(make_worker(worker_config_from_args(args)), args.host, args.port,
                           args.exit_with_parent))
    except TandemError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0
