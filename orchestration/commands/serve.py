"""`tandem serve`: start the workers (Ray actors by default, or local processes, or threads of
this process), then the gateway in this process in front of them; Ctrl-C stops everything.

    tandem serve [--model M] [--mode colocated|disaggregated] [--prefill-workers N]
                 [--decode-workers M] [--launcher ray|process|inprocess] [--ray-address ADDR]
                 [--gpus N] [--device cpu|cuda:N] [--gpu-memory-fraction F]
                 [--host H] [--grpc-port P] [--http-port P] [--kv-transport auto|grpc|cuda_ipc|local]
                 [--num-kv-blocks N] [--max-num-seqs N] [--api-key K] [--insecure] [--cluster-token-file PATH]
                 [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--warm-path-timeout S] ...
                 [--autoscale --min-prefill-workers N --max-prefill-workers N
                              --min-decode-workers N --max-decode-workers N]
                 [--ray-node-groups N] [--ray-strategy pack|spread]

With --autoscale the cluster starts at the minimum counts and the autoscaler
(orchestration/autoscaler.py) adds and removes workers within the limits."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time

from orchestration.cluster import LAUNCHERS, MODES, Cluster, ClusterConfig, ClusterHandle
from orchestration.launchers import RAY_STRATEGIES
from orchestration.scaling_policy import RoleLimits, ScalingPolicyConfig
from services.engine.config import EngineConfig
from services.kvtransfer import TRANSPORTS, TransferConfig
from services.security.cluster_token import new_token, read_token_file
from services.security.exposure import check_exposure
from services.security.tls import add_tls_arguments, tls_from_args
from services.worker.cli import add_engine_arguments, engine_config_from_args
from services.worker.config import WorkerConfig

_CLUSTER, _WORKER = ClusterConfig(), WorkerConfig()


def _admission_default(name: str):
    from services.gateway.config import AdmissionConfig
    return getattr(AdmissionConfig(), name)


def _gateway_default(name: str):
    from services.gateway.config import GatewayConfig
    return next(f.default for f in dataclasses.fields(GatewayConfig) if f.name == name)


def add_arguments(p: argparse.ArgumentParser, default_launcher: str = _CLUSTER.launcher,
                  default_ray_address: str | None = None) -> None:
    p.add_argument("--mode", choices=MODES, default=_CLUSTER.mode)
    p.add_argument("--prefill-workers", type=int, default=_CLUSTER.prefill_workers)
    p.add_argument("--decode-workers", type=int, default=_CLUSTER.decode_workers)
    p.add_argument("--launcher", choices=LAUNCHERS, default=default_launcher,
                   help="ray: one actor per worker (a local Ray instance unless --ray-address); "
                        "process: one local process per worker; inprocess: threads of this process")
    p.add_argument("--ray-address", default=default_ray_address, help="join this Ray cluster")
    p.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    p.add_argument("--gpus", type=int, default=None,
                   help="use at most this many GPUs (0: CPU only; default: all). One GPU per worker "
                        "when there are enough, else workers share them; --device pins them all")
    p.add_argument("--host", default=_CLUSTER.host, help="where the gateway listens")
    p.add_argument("--worker-host", default=None,
                   help="where workers listen (default: --host; 0.0.0.0 on a multi-node Ray cluster)")
    p.add_argument("--worker-base-port", type=int, default=0,
                   help="worker i listens on this + i (0: free ports)")
    p.add_argument("--grpc-port", type=int, default=_gateway_default("grpc_port"))
    p.add_argument("--http-port", type=int, default=_gateway_default("http_port"))
    p.add_argument("--kv-transport", choices=TRANSPORTS, default=_CLUSTER.kv_transport,
                   help="auto: cuda_ipc on one node with CUDA, else grpc; local needs --launcher inprocess")
    p.add_argument("--reservation-ttl", type=float, default=_WORKER.reservation_ttl_s)
    p.add_argument("--engine-process", action="store_true",
                   help="each worker's engine in a process of its own (docs/enginecore.md; on a "
                        "GPU: --mode colocated only)")
    p.add_argument("--max-queued-requests", type=int, default=_admission_default("max_queued_requests"),
                   help="requests waiting for capacity at the gateway; beyond this: 429 at once")
    p.add_argument("--queue-timeout", type=float, default=_admission_default("queue_timeout_s"),
                   help="seconds a queued request waits for capacity before its 429")
    p.add_argument("--api-key", action="append", default=[], help="accepted API key; repeat for several")
    p.add_argument("--insecure", action="store_true",
                   help="serve without API keys although --host is beyond loopback")
    p.add_argument("--cluster-token-file", default=None, metavar="PATH",
                   help="the secret every call to and between the workers carries (default: a "
                        "random one, handed to the workers this command starts)")
    add_tls_arguments(p)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--warm-path-timeout", type=float, default=_gateway_default("warm_path_timeout_s"),
                   help="the gateway's real requests to every worker before it serves: at most "
                        "this many seconds (0: none)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--ray-node-groups", type=int, default=_CLUSTER.node_groups,
                   help="Ray: split the workers into this many groups, each on one node (a prefill "
                        "worker with the decode workers it feeds, so pages stay on the node)")
    p.add_argument("--ray-strategy", choices=RAY_STRATEGIES, default=_CLUSTER.ray_strategy,
                   help="Ray: pack the node groups onto few nodes, or spread them across nodes")
    add_scaling_arguments(p)
    add_engine_arguments(p)


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    from orchestration.autoscaler import AutoscalerConfig
    auto, policy = AutoscalerConfig(), ScalingPolicyConfig()
    g = p.add_argument_group("autoscaling")
    g.add_argument("--autoscale", action="store_true",
                   help="add and remove workers as the load changes, within the limits below")
    for role in ("prefill", "decode"):
        g.add_argument(f"--min-{role}-workers", type=int, default=None,
                       help=f"default: --{role}-workers")
        g.add_argument(f"--max-{role}-workers", type=int, default=None,
                       help=f"default: --{role}-workers")
    g.add_argument("--scale-interval", type=float, default=auto.interval_s)
    g.add_argument("--scale-up-cooldown", type=float, default=policy.up_cooldown_s)
    g.add_argument("--scale-down-cooldown", type=float, default=policy.down_cooldown_s)
    g.add_argument("--scale-down-window", type=float, default=policy.down_window_s,
                   help="seconds of load a role must stay idle over before a worker is removed")
    g.add_argument("--scale-sustain-ticks", type=int, default=policy.sustain_ticks)
    g.add_argument("--prefill-wait-up", type=float, default=policy.prefill_wait_up_s,
                   help="estimated prefill queue seconds that add a prefill worker")
    g.add_argument("--ttft-slo", type=float, default=auto.ttft_slo_s)
    g.add_argument("--tpot-slo", type=float, default=auto.tpot_slo_s)


def _limits(args: argparse.Namespace, role: str) -> RoleLimits:
    start = getattr(args, f"{role}_workers")
    low, high = getattr(args, f"min_{role}_workers"), getattr(args, f"max_{role}_workers")
    low = start if low is None else low
    return RoleLimits(low, max(low, start) if high is None else high)


def autoscaler_config(args: argparse.Namespace):
    """None without --autoscale."""
    if not args.autoscale:
        return None
    from orchestration.autoscaler import AutoscalerConfig
    policy = ScalingPolicyConfig(
        prefill=_limits(args, "prefill") if args.mode == "disaggregated" else None,
        decode=_limits(args, "decode"), up_cooldown_s=args.scale_up_cooldown,
        down_cooldown_s=args.scale_down_cooldown, down_window_s=args.scale_down_window,
        sustain_ticks=args.scale_sustain_ticks,
        prefill_wait_up_s=args.prefill_wait_up)
    return AutoscalerConfig(policy=policy, interval_s=args.scale_interval, ttft_slo_s=args.ttft_slo,
                            tpot_slo_s=args.tpot_slo)


def cluster_config_from_args(args: argparse.Namespace) -> ClusterConfig:
    engine: EngineConfig = engine_config_from_args(args)
    prefill, decode = args.prefill_workers, args.decode_workers
    scaling = {}
    auto = autoscaler_config(args)
    if auto is not None:        # start at the minimum, plan for the maximum
        decode = auto.policy.decode.min_workers
        scaling["max_decode_workers"] = auto.policy.decode.max_workers
        if auto.policy.prefill is not None:
            prefill = auto.policy.prefill.min_workers
            scaling["max_prefill_workers"] = auto.policy.prefill.max_workers
    return ClusterConfig(
        mode=args.mode, prefill_workers=prefill, decode_workers=decode, **scaling,
        node_groups=args.ray_node_groups, ray_strategy=args.ray_strategy,
        engine=engine, worker=WorkerConfig(reservation_ttl_s=args.reservation_ttl,
                                           engine_process=args.engine_process,
                                           transfer=TransferConfig(cluster_token=_cluster_token(args))),
        kv_transport=args.kv_transport, host=args.worker_host or args.host,
        base_port=args.worker_base_port, launcher=args.launcher, gpus=args.gpus,
        ray_address=args.ray_address,
        ray_num_cpus=args.ray_num_cpus, capture_worker_logs=False)


def _cluster_token(args: argparse.Namespace) -> str:
    return read_token_file(args.cluster_token_file) if args.cluster_token_file else new_token()


def gateway_config(args: argparse.Namespace, handle: ClusterHandle):
    from services.gateway.config import AdmissionConfig, GatewayConfig
    admission = AdmissionConfig(max_queued_requests=args.max_queued_requests,
                                queue_timeout_s=args.queue_timeout)
    return GatewayConfig(model=args.model, admission=admission, served_model_name=args.served_model_name, host=args.host,
                         grpc_port=args.grpc_port, http_port=args.http_port,
                         api_keys=tuple(args.api_key), insecure=args.insecure, tls=tls_from_args(args),
                         warm_path_timeout_s=args.warm_path_timeout,
                         # max_model_len: the workers report it
                         reservation_ttl_s=args.reservation_ttl, **handle.gateway_fields())


async def serve_gateway(config, cluster: Cluster | None = None, autoscale=None,
                        max_num_seqs: int = 1) -> None:
    """Runs the gateway (and, given `autoscale`, the autoscaler over `cluster`) until SIGINT /
    SIGTERM."""
    from orchestration.autoscaler import Autoscaler
    from services.gateway.gateway import Gateway
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Workers of an in-process cluster are the gateway's to call directly (no loopback gRPC).
    local_workers = cluster.local_worker if cluster is not None else (lambda address: None)
    async with Gateway(config, local_workers) as gateway:
        autoscaler = None
        if autoscale is not None:
            autoscaler = Autoscaler(autoscale, gateway, cluster, max_num_seqs)
            await autoscaler.start()
        print(f"tandem: serving {config.model_id} ({config.mode}) on gRPC {gateway.grpc_address}, "
              f"HTTP {gateway.http_url}; Ctrl-C stops", flush=True)
        try:
            await stop.wait()
        finally:
            if autoscaler is not None:
                await autoscaler.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    check_exposure(args.host, tuple(args.api_key), args.insecure)   # before any worker starts
    tls_from_args(args)
    config = cluster_config_from_args(args)
    started = time.perf_counter()
    cluster = Cluster(config)
    with cluster as handle:
        where = ", ".join(sorted({str(p) for p in cluster.placements}))
        print(f"tandem: workers up and warmed up in {time.perf_counter() - started:.1f}s "
              f"({config.launcher}; {where}): prefill {list(handle.prefill_addresses)}, "
              f"decode {list(handle.decode_addresses)}", flush=True)
        asyncio.run(serve_gateway(gateway_config(args, handle), cluster, autoscaler_config(args),
                                  config.engine.scheduler.max_num_seqs))
    return 0
