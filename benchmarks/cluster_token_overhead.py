"""What the cluster token costs on the gateway's busiest worker call: a server-streaming RPC (as
DecodeWorker.Decode) on loopback, with and without the token (client interceptors adding the
metadata, the server interceptor checking it), in one run, alternating.

    python -m benchmarks.cluster_token_overhead --calls 400 --messages 64
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc

from services.security.cluster_token import aio_channel, server_interceptors

METHOD = "/bench.Stream/Tokens"
TOKEN = "benchmark-token"


async def _server(token: str, messages: int):
    async def tokens(request, context):
        for _ in range(messages):
            yield b"x" * 16

    handler = grpc.unary_stream_rpc_method_handler(tokens, request_deserializer=bytes,
                                                   response_serializer=bytes)
    server = grpc.aio.server(interceptors=server_interceptors(token))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Stream", {"Tokens": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _timed(address: str, token: str, calls: int) -> list[float]:
    async with aio_channel(address, token) as channel:
        call = channel.unary_stream(METHOD, request_serializer=bytes, response_deserializer=bytes)
        out = []
        for _ in range(calls):
            start = time.perf_counter()
            async for _ in call(b""):
                pass
            out.append(time.perf_counter() - start)
        return out


async def main(calls: int, messages: int, rounds: int) -> None:
    servers = {name: await _server(token, messages) for name, token in (("plain", ""), ("token", TOKEN))}
    times: dict[str, list[float]] = {"plain": [], "token": []}
    try:
        for _ in range(rounds):
            for name, token in (("plain", ""), ("token", TOKEN)):
                times[name] += await _timed(servers[name][1], token, calls)
    finally:
        for server, _ in servers.values():
            await server.stop(0)
    for name, t in times.items():
        t.sort()
        print(f"{name}: p50 {statistics.median(t) * 1e3:.3f} ms / call of {messages} messages, "
              f"p99 {t[int(0.99 * (len(t) - 1))] * 1e3:.3f} ms")
    ratio = statistics.median(times["token"]) / statistics.median(times["plain"])
    print(f"token / plain median: {ratio:.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--messages", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    asyncio.run(main(a.calls, a.messages, a.rounds))
