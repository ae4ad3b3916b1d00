"""`python -m services.gateway`: a gateway in front of running workers (containers, Ray jobs).

    python -m services.gateway --decode 10.0.0.2:50061 --prefill 10.0.0.3:50071 \\
        --model tiny-random --grpc-port 50051 --http-port 8000 [--mode colocated] [--api-key K ...] [--insecure]
        [--cluster-token-file PATH] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
        [--warm-path-timeout S]

Runs until SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from services.engine.errors import TandemError
from services.gateway.config import KV_TRANSPORTS, MODES, AdmissionConfig, GatewayConfig
from services.gateway.gateway import Gateway
from services.security.cluster_token import read_token_file
from services.security.tls import add_tls_arguments, tls_from_args

_DEFAULTS = GatewayConfig(decode_workers=("unused:0",), prefill_workers=("unused:0",))
_ADMISSION = AdmissionConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__.splitlines()[0])
    p.add_argument("--decode", action="append", required=True, metavar="HOST:PORT",
                   help="a DecodeWorker (or colocated worker) address; repeat for several")
    p.add_argument("--prefill", action="append", default=[], metavar="HOST:PORT",
                   help="a PrefillWorker address; repeat for several (disaggregated mode)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="default: disaggregated when --prefill is given, else colocated")
    p.add_argument("--model", default=_DEFAULTS.model)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default=_DEFAULTS.host)
    p.add_argument("--grpc-port", type=int, default=_DEFAULTS.grpc_port)
    p.add_argument("--http-port", type=int, default=_DEFAULTS.http_port)
    p.add_argument("--api-key", action="append", default=[], help="accepted API key; repeat for several")
    p.add_argument("--insecure", action="store_true",
                   help="serve without API keys although --host is beyond loopback")
    p.add_argument("--cluster-token-file", default=None, metavar="PATH",
                   help="the workers' shared secret, sent on every call to them")
    add_tls_arguments(p)
    p.add_argument("--kv-transport", choices=KV_TRANSPORTS, default=_DEFAULTS.kv_transport)
    p.add_argument("--max-model-len", type=int, default=None,
                   help="a cap on the max_model_len the workers report (default: theirs)")
    p.add_argument("--request-timeout", type=float, default=_DEFAULTS.request_timeout_s)
    p.add_argument("--worker-ready-timeout", type=float, default=_DEFAULTS.worker_ready_timeout_s,
                   help="seconds to wait at start for the workers' first load reports")
    p.add_argument("--warm-path-timeout", type=float, default=_DEFAULTS.warm_path_timeout_s,
                   help="at most this many seconds of real requests to every worker before "
                        "serving (0: none)")
    p.add_argument("--max-queued-requests", type=int, default=_ADMISSION.max_queued_requests)
    p.add_argument("--queue-timeout", type=float, default=_ADMISSION.queue_timeout_s)
    p.add_argument("--tenant-tokens-per-s", type=float, default=_ADMISSION.tenant_tokens_per_s)
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    mode = args.mode or ("disaggregated" if args.prefill else "colocated")
    return GatewayConfig(
        model=args.model, served_model_name=args.served_model_name, mode=mode,
        prefill_workers=tuple(args.prefill), decode_workers=tuple(args.decode), host=args.host,
        grpc_port=args.grpc_port, http_port=args.http_port, api_keys=tuple(args.api_key), insecure=args.insecure,
        cluster_token=read_token_file(args.cluster_token_file) if args.cluster_token_file else "",
        tls=tls_from_args(args),
        kv_transport=args.kv_transport, max_model_len=args.max_model_len,
        request_timeout_s=args.request_timeout, worker_ready_timeout_s=args.worker_ready_timeout,
        warm_path_timeout_s=args.warm_path_timeout,
        admission=AdmissionConfig(max_queued_requests=args.max_queued_requests,
                                  queue_timeout_s=args.queue_timeout,
                                  tenant_tokens_per_s=args.tenant_tokens_per_s))


async def serve(config: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(config) as gateway:
        print(f"gateway: gRPC {gateway.grpc_address}  HTTP {gateway.http_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(config_from_args(args)))
    except TandemError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except (TimeoutError, OSError) as exc:      # workers not answering, port taken
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
