"""The gRPC server a worker listens on: bound to host:port (port 0 picks a free one), with the
message size limits the KV transport needs, standard health checking that follows the worker's
readiness (NOT_SERVING until it has warmed up), stopped with a short grace
period."""

from __future__ import annotations

import socket

import grpc

from services.addresses import bracket_host
from services.engine.errors import ConfigError
from services.kvtransfer import TransferConfig, channel_options
from services.security.cluster_token import server_interceptors
from services.worker.readiness import Readiness

WILDCARDS = ("0.0.0.0", "::", "[::]", "")
# gRPC core lets only 1000 new calls wait for the application by default and cancels the rest:
# a burst of streams from the gateway would lose requests before any handler saw them.
PENDING_CALLS = (("grpc.server.max_pending_requests", 1 << 16),
                 ("grpc.server.max_pending_requests_hard_limit", 1 << 16))
# gRPC binds with SO_REUSEPORT by default: another process of the same user that binds a worker's
# port (one it picked as free a moment earlier) would then share it silently, and answer in the
# worker's place once it stops. An exclusive port fails that bind instead.
EXCLUSIVE_PORT = (("grpc.so_reuseport", 0),)


async def start_server(register, host: str, port: int, transfer: TransferConfig,
                       readiness: Readiness, advertise_host: str = "") -> tuple[grpc.aio.Server, str]:
    """Starts a grpc.aio server with `register(server)` applied, not serving until
    `readiness.set_serving()`; returns it and the address others reach it by: advertise_host if
    given, else the bound host (for a wildcard bind, this machine's host name)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in [0, 65535], got {port}")
    server = grpc.aio.server(options=[*channel_options(transfer), *PENDING_CALLS, *EXCLUSIVE_PORT],
                             interceptors=server_interceptors(transfer.cluster_token))
    register(server)
    readiness.add_to(server)
    await readiness.set_not_serving()
    try:
        bound = server.add_insecure_port(f"{bracket_host(host)}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ConfigError(f"cannot listen on {host}:{port}")
    await server.start()
    reach = advertise_host or (socket.gethostname() if host in WILDCARDS else host)
    return server, f"{bracket_host(reach)}:{bound}"
