"""`python -m tests.loadgen_target [flags]`: serve both protocols on free loopback ports, print
one JSON line {"http_port": ..., "grpc_port": ...} on stdout, run until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import signal
import sys

from aiohttp import web

from loadgen.process_limits import raise_open_files_limit
from tests.loadgen_target.behaviour import EmissionLog, TargetBehaviour
from tests.loadgen_target.http_server import build_app
from tests.loadgen_target.precise_loop import run_precise, tighten_timer_slack


def parse_behaviour(argv: list[str]) -> tuple[TargetBehaviour, str, bool]:
    p = argparse.ArgumentParser(prog="python -m tests.loadgen_target")
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--output-tokens", type=int, default=None)
    for name in ("error-every", "stall-every", "close-every"):
        p.add_argument(f"--{name}", type=int, default=0)
    p.add_argument("--error-status", type=int, default=500)
    p.add_argument("--stall-after", type=int, default=1)
    p.add_argument("--close-after", type=int, default=1)
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-active", type=int, default=0, help="streams served at once; the rest wait")
    p.add_argument("--loop", choices=("precise", "asyncio", "uvloop"), default="precise")
    p.add_argument("--no-grpc", action="store_true", help="serve HTTP only (grpc_port 0)")
    a = p.parse_args(argv)
    return TargetBehaviour(ttft_s=a.ttft_ms / 1e3, itl_s=a.itl_ms / 1e3, output_tokens=a.output_tokens,
                           error_every=a.error_every, error_status=a.error_status, stall_every=a.stall_every,
                           stall_after=a.stall_after, close_every=a.close_every, close_after=a.close_after,
                           api_key=a.api_key, max_active=a.max_active), a.loop, not a.no_grpc


async def serve(behaviour: TargetBehaviour, with_grpc: bool = True) -> None:
    # No full collections mid-test: a gen-2 pass over many connections would delay tokens.
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)
    counter, log = itertools.count(1), EmissionLog()
    slots = asyncio.Semaphore(behaviour.max_active) if behaviour.max_active else None
    runner = web.AppRunner(build_app(behaviour, counter, log, slots), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    http_port = site._server.sockets[0].getsockname()[1]
    grpc_server, grpc_port = None, 0
    if with_grpc:
        from tests.loadgen_target.grpc_server import build_grpc_server
        grpc_server = build_grpc_server(behaviour, counter, log, slots)
        grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
    print(json.dumps({"http_port": http_port, "grpc_port": grpc_port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if grpc_server is not None:
        await grpc_server.stop(0)
    await runner.cleanup()


def main(argv: list[str]) -> None:
    behaviour, loop, with_grpc = parse_behaviour(argv)
    raise_open_files_limit()
    if loop == "uvloop":
        import uvloop
        tighten_timer_slack()
        uvloop.run(serve(behaviour, with_grpc))
    elif loop == "asyncio":
        asyncio.run(serve(behaviour, with_grpc))
    else:
        run_precise(serve(behaviour, with_grpc))


if __name__ == "__main__":
    main(sys.argv[1:])
