"""`tandem serve`: start the workers (Ray actors by default, or local processes, or threads of
this process), then the gateway in this process in front of them; Ctrl-C stops everything.

    tandem serve [--model M] [--mode colocated|disaggregated] [--prefill-workers N]
                 [--decode-workers M] [--launcher ray|process|inprocess] [--ray-address ADDR]
                 [--gpus N] [--device cpu|cuda:N] [--gpu-memory-fraction F]
                 [--host H] [--grpc-port P] [--http-port P] [--kv-transport auto|grpc|cuda_ipc|local]
                 [--num-kv-blocks N] [--max-num-seqs N] [--api-key K] ..."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time

from orchestration.cluster import LAUNCHERS, MODES, Cluster, ClusterConfig, ClusterHandle
from services.engine.config import EngineConfig
from services.kvtransfer import TRANSPORTS
from services.worker.cli import add_engine_arguments, engine_config_from_args
from services.worker.config import WorkerConfig

_CLUSTER, _WORKER = ClusterConfig(), WorkerConfig()


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
    p.add_argument("--api-key", action="append", default=[], help="accepted API key; repeat for several")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--log-level", default="INFO")
    add_engine_arguments(p)


def cluster_config_from_args(args: argparse.Namespace) -> ClusterConfig:
    engine: EngineConfig = engine_config_from_args(args)
    return ClusterConfig(
        mode=args.mode, prefill_workers=args.prefill_workers, decode_workers=args.decode_workers,
        engine=engine, worker=WorkerConfig(reservation_ttl_s=args.reservation_ttl,
                                               engine_process=args.engine_process),
        kv_transport=args.kv_transport, host=args.worker_host or args.host,
        base_port=args.worker_base_port, launcher=args.launcher, gpus=args.gpus,
        ray_address=args.ray_address,
        ray_num_cpus=args.ray_num_cpus, capture_worker_logs=False)


def gateway_config(args: argparse.Namespace, handle: ClusterHandle):
    from services.gateway.config import GatewayConfig
    return GatewayConfig(model=args.model, served_model_name=args.served_model_name, host=args.host,
                         grpc_port=args.grpc_port, http_port=args.http_port,
                         api_keys=tuple(args.api_key),     # max_model_len: the workers report it
                         reservation_ttl_s=args.reservation_ttl, **handle.gateway_fields())


async def serve_gateway(config) -> None:
    """Runs the gateway until SIGINT / SIGTERM."""
    from services.gateway.gateway import Gateway
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(config) as gateway:
        print(f"tandem: serving {config.model_id} ({config.mode}) on gRPC {gateway.grpc_address}, "
              f"HTTP {gateway.http_url}; Ctrl-C stops", flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = cluster_config_from_args(args)
    started = time.perf_counter()
    cluster = Cluster(config)
    with cluster as handle:
        where = ", ".join(sorted({str(p) for p in cluster.placements}))
        print(f"tandem: workers up and warmed up in {time.perf_counter() - started:.1f}s "
              f"({config.launcher}; {where}): prefill {list(handle.prefill_addresses)}, "
              f"decode {list(handle.decode_addresses)}", flush=True)
        asyncio.run(serve_gateway(gateway_config(args, handle)))
    return 0
