"""KV page transfer throughput: the gRPC transport on loopback (sender and receiver in separate
processes, as prefill and decode run) and the local transport (same process). Baselines from the
same run: gRPC's own ceiling (the same bytes as ready-made messages, on the same number of
streams, that the receiver only counts) and a plain copy of the bytes.

    python -m benchmarks.kv_transfer [--page-mib 2] [--pages 64] [--repeats 5] [--streams 2]
                                     [--sender-processes N] [--json out.json]

`--mode cuda_ipc` (a GPU machine) measures the CUDA IPC transport instead: the decode side's pool
on a GPU in a process of its own (the real receiver and KVTransfer server), this process the
prefill side. It reports the copy writing scattered pages into the mapped pool (CUDA events: the
page-copy kernel on one GPU), the whole transfer (`send_pages`: BeginWrite, copy, checksums on both GPUs, EndWrite),
with and without checksums, and the baseline of the same run: one device-to-device copy of the
same bytes (`--decode-device cuda:1` puts the pool on a second GPU: the baseline is then a peer
copy).

    python -m benchmarks.kv_transfer --mode cuda_ipc [--pages 64] [--repeats 20]
                                     [--decode-device cuda:0] [--json out.json]

Pages default to a Llama-3.1-8B bf16 page (32 layers x K/V x 16 tokens x 8 heads x 128 = 2 MiB),
64 of them per transfer (a 1024-token prompt). The receiving process lands every page into a
preallocated pool and checks each page's checksum (xxh3_64), exactly as a decode worker does."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from services.kvtransfer import (KVReceiver, KVTransferServer, KVTransports, LocalEndpoints,
                                 PageRun, TransferConfig, channel_options)
from services.kvtransfer.grpc_sender import GrpcKVSender
from services.kvtransfer.pages import stripes
from tests.helpers.device_timing import host_launch_ms, queued_device_ms

LAYERS, HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16


def page_shape(page_mib: float) -> tuple[int, ...]:
    """An 8B-like page, scaled in its layer count to the requested size (bf16)."""
    per_layer = 2 * BLOCK * HEADS * HEAD_DIM * 2
    layers = max(1, round(page_mib * 2**20 / per_layer))
    return (layers, 2, BLOCK, HEADS, HEAD_DIM)


# --- the receiving process -----------------------------------------------------------------------
def _discard(messages, context) -> bytes:
    return sum(len(m) for m in messages).to_bytes(8, "little")


def _raw_server(config: TransferConfig) -> tuple[grpc.Server, int]:
    """The ceiling: a stream of ready-made messages that the server only counts."""
    server = grpc.server(ThreadPoolExecutor(16), options=channel_options(config))
    handler = grpc.stream_unary_rpc_method_handler(_discard, request_deserializer=bytes,
                                                   response_serializer=bytes)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Raw", {"Push": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _raw_seconds(port: int, config: TransferConfig, nbytes: int, repeats: int) -> list[float]:
    options = channel_options(config) + [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(config.streams)]
    pushes = [c.stream_unary("/bench.Raw/Push", request_serializer=bytes, response_deserializer=bytes)
              for c in channels]
    message = os.urandom(config.chunk_bytes)
    per_stream = nbytes // config.chunk_bytes // config.streams
    seconds = []
    with ThreadPoolExecutor(config.streams) as pool:
        for i in range(repeats + 1):
            start = time.perf_counter()
            list(pool.map(lambda push: push(iter([message] * per_stream)), pushes))
            if i:
                seconds.append(time.perf_counter() - start)
    for channel in channels:
        channel.close()
    return seconds


def _receive(shape: tuple[int, ...], num_pages: int, config: TransferConfig) -> None:
    pool = torch.zeros((num_pages, *shape), dtype=torch.bfloat16)
    receiver = KVReceiver(pool, BLOCK)
    server = KVTransferServer(receiver, config)
    raw, raw_port = _raw_server(config)
    print(f"PORT {server.start('127.0.0.1', 0)} {raw_port}", flush=True)
    # The parent drives the receiver over stdin: "expect <id>" opens an inbox, "done <id>" closes it.
    while line := sys.stdin.readline().strip():
        verb, request_id = line.split()
        if verb == "expect":
            receiver.expect(request_id, list(range(num_pages)))
        else:
            inbox = receiver.discard(request_id)
            assert inbox is not None and inbox.landed.result() > 0
        print("ok", flush=True)
    server.stop(None)
    raw.stop(None)


# --- the sending side ----------------------------------------------------------------------------
class RemoteReceiver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.kv_transfer", "--receive", "--page-mib", str(args.page_mib),
             "--pages", str(args.pages), "--chunk-mib", str(args.chunk_mib), "--streams", str(args.streams)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        _, port, raw_port = self.proc.stdout.readline().split()
        self.address, self.raw_port = f"127.0.0.1:{port}", int(raw_port)

    def say(self, verb: str, request_id: str) -> None:
        self.proc.stdin.write(f"{verb} {request_id}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


async def _timed_transfers(transports: KVTransports, address: str, transport: str, src: torch.Tensor,
                           repeats: int, expect, done) -> list[float]:
    sender = transports.sender_for(address, transport)
    num_tokens = src.shape[0] * BLOCK
    seconds = []
    for i in range(repeats + 1):            # the first one warms the channel up, not counted
        expect(f"t{i}")
        start = time.perf_counter()
        await sender.send_pages(PageRun(f"t{i}", src, tuple(range(src.shape[0])), num_tokens))
        elapsed = time.perf_counter() - start
        done(f"t{i}")
        if i:
            seconds.append(elapsed)
    return seconds


def _stripe_sender_process(conn, address: str, stripe: range, pages: int, page_mib: float,
                           chunk_mib: float) -> None:
    """One sending process (a GIL of its own) pushing one stripe of every transfer."""
    src = torch.randn((pages, *page_shape(page_mib))).to(torch.bfloat16)
    sender = GrpcKVSender(address, TransferConfig(chunk_bytes=int(chunk_mib * 2**20), streams=1))
    while (request_id := conn.recv()) is not None:
        run = PageRun(request_id, src, tuple(range(pages)), pages * BLOCK)
        encoder, call = sender.start_stripe(run, stripe)
        conn.send(sender._result(call, run).bytes_received)
        encoder.stop()


def _process_seconds(args: argparse.Namespace, remote: "RemoteReceiver", processes: int) -> list[float]:
    """Each stripe of the transfer sent from a process of its own, into the one receiver."""
    ctx = multiprocessing.get_context("spawn")
    parts = stripes(args.pages, 1, processes, 1)
    links = []
    for stripe in parts:
        mine, theirs = ctx.Pipe()
        ctx.Process(target=_stripe_sender_process, daemon=True,
                    args=(theirs, remote.address, stripe, args.pages, args.page_mib, args.chunk_mib)).start()
        links.append(mine)
    seconds = []
    for i in range(args.repeats + 1):
        remote.say("expect", f"p{i}")
        start = time.perf_counter()
        for link in links:
            link.send(f"p{i}")
        assert all(link.recv() > 0 for link in links)
        elapsed = time.perf_counter() - start
        remote.say("done", f"p{i}")
        if i:
            seconds.append(elapsed)
    for link in links:
        link.send(None)
    return seconds


def _copy_seconds(src: torch.Tensor, repeats: int) -> list[float]:
    dst = torch.empty_like(src)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        out.append(time.perf_counter() - start)
    return out


async def run(args: argparse.Namespace) -> dict:
    config = _config(args)
    shape = page_shape(args.page_mib)
    src = torch.randn((args.pages, *shape)).to(torch.bfloat16)
    nbytes = src.numel() * src.element_size()
    results = {"page_shape": list(shape), "page_bytes": nbytes // args.pages, "pages": args.pages,
               "transfer_bytes": nbytes, "chunk_bytes": config.chunk_bytes, "streams": config.streams,
               "repeats": args.repeats, "cpu_cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads()}
    transports = KVTransports(config)
    remote = RemoteReceiver(args)
    try:
        secs = await _timed_transfers(transports, remote.address, "grpc", src, args.repeats,
                                      lambda r: remote.say("expect", r), lambda r: remote.say("done", r))
        results["grpc"] = _summary(nbytes, secs)
        raw = await asyncio.to_thread(_raw_seconds, remote.raw_port, config, nbytes, args.repeats)
        results["grpc_ceiling_prebuilt_messages"] = _summary(nbytes, raw)
        if args.sender_processes:
            secs = await asyncio.to_thread(_process_seconds, args, remote, args.sender_processes)
            results[f"grpc_from_{args.sender_processes}_sender_processes"] = _summary(nbytes, secs)
    finally:
        remote.close()
    local_pool = torch.zeros_like(src)
    receiver = KVReceiver(local_pool, BLOCK)
    LocalEndpoints.register("bench-local", receiver)
    try:
        secs = await _timed_transfers(transports, "bench-local", "local", src, args.repeats,
                                      lambda r: receiver.expect(r, list(range(args.pages))),
                                      receiver.discard)
        assert torch.equal(local_pool, src)
        results["local"] = _summary(nbytes, secs)
    finally:
        LocalEndpoints.unregister("bench-local")
    await transports.close()
    results["plain_copy"] = _summary(nbytes, _copy_seconds(src, args.repeats))
    return results


# --- cuda_ipc (GPU) -------------------------------------------------------------------------------
def _cuda_ms(fn, repeats: int) -> list[float]:
    """Seconds of device time per call, each call queued behind a GPU spin so that the host's
    launch latency (tens of microseconds for a Triton launch) is not counted as copy time; the
    launch itself is reported apart, as `host_launch_ms`."""
    return [ms / 1e3 for ms in queued_device_ms(fn, repeats)]


async def run_cuda_ipc(args: argparse.Namespace) -> dict:
    from tests.helpers.kv_decode_process import DecodeSideProcess
    shape = page_shape(args.page_mib)
    pages, src_device = args.pages, "cuda:0"
    decode_blocks = pages * 2
    src = torch.randn((pages * 2, *shape), device=src_device).to(torch.bfloat16)
    nbytes = pages * src[0].numel() * src.element_size()
    # Scattered blocks on both sides, as a busy pool hands them out.
    src_ids = tuple(torch.randperm(pages * 2)[:pages].tolist())
    dst_ids = tuple(torch.randperm(decode_blocks)[:pages].tolist())
    results = {"mode": "cuda_ipc", "page_shape": list(shape), "page_bytes": nbytes // pages,
               "pages": pages, "transfer_bytes": nbytes, "repeats": args.repeats,
               "device": torch.cuda.get_device_name(0), "decode_device": args.decode_device,
               "torch": torch.__version__}
    side = DecodeSideProcess((decode_blocks, *shape), "bfloat16", args.decode_device, BLOCK)
    try:
        for checks in (True, False):
            transports = KVTransports(TransferConfig(ipc_checksums=checks))
            try:
                sender = transports.sender_for(side.address, "auto")
                seconds = []
                for i in range(args.repeats + 1):
                    rid = f"ipc-{checks}-{i}"
                    side.ok("expect", rid, dst_ids)
                    start = time.perf_counter()
                    await sender.send_pages(PageRun(rid, src, src_ids, pages * BLOCK, dst_block_ids=dst_ids))
                    elapsed = time.perf_counter() - start
                    assert side.ok("landed", rid) == pages * BLOCK
                    if i:
                        seconds.append(elapsed)
                results["auto_chose"] = sender.chosen.name
                if sender.chosen.name != "cuda_ipc":
                    raise SystemExit("auto did not choose cuda_ipc (see the log line 'KV pages to ... go by')")
                key = "send_pages_with_checksums" if checks else "send_pages_without_checksums"
                results[key] = _summary(nbytes, seconds)
                if checks:
                    landed = side.ok("pages", list(dst_ids))
                    results["bit_exact"] = landed == src[list(src_ids)].cpu().view(torch.uint8).numpy().tobytes()
                    # The copy send_pages launches (the page-copy kernel on one GPU; a gather
                    # and peer copies to another), timed alone with CUDA events.
                    ipc, remote = sender.chosen, await sender.chosen.remote_pool()
                    s_idx = torch.tensor(src_ids, device=src_device)
                    d_idx = torch.tensor(dst_ids, device=src_device)
                    def launch() -> None:
                        ipc._launch_copy(src, s_idx, remote, d_idx, src_ids, dst_ids)
                    results["copy_into_mapped_pool"] = _summary(nbytes, _cuda_ms(launch, args.repeats))
                    results["copy_host_launch_ms"] = host_launch_ms(launch, args.repeats)
            finally:
                await transports.close()
    finally:
        side.close()
    a = torch.empty(nbytes, dtype=torch.uint8, device=src_device)
    b = torch.empty(nbytes, dtype=torch.uint8, device=args.decode_device)
    results["baseline_one_device_copy"] = _summary(nbytes, _cuda_ms(lambda: b.copy_(a), args.repeats))
    base = results["baseline_one_device_copy"]["median_gb_s"]
    results["copy_vs_baseline"] = results["copy_into_mapped_pool"]["median_gb_s"] / base
    results["send_pages_vs_baseline"] = results["send_pages_without_checksums"]["median_gb_s"] / base
    return results


def _config(args: argparse.Namespace) -> TransferConfig:
    return TransferConfig(chunk_bytes=int(args.chunk_mib * 2**20), streams=args.streams)


def _summary(nbytes: int, seconds: list[float]) -> dict:
    best, median = min(seconds), sorted(seconds)[len(seconds) // 2]
    return {"median_s": median, "best_s": best, "median_gb_s": nbytes / median / 1e9,
            "best_gb_s": nbytes / best / 1e9}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page-mib", type=float, default=2.0)
    p.add_argument("--pages", type=int, default=64)
    p.add_argument("--chunk-mib", type=float, default=TransferConfig().chunk_bytes / 2**20)
    p.add_argument("--streams", type=int, default=TransferConfig().streams)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sender-processes", type=int, default=0,
                   help="also send each transfer as this many stripes from as many processes")
    p.add_argument("--json", default=None)
    p.add_argument("--mode", choices=("grpc", "cuda_ipc"), default="grpc",
                   help="grpc: host pools, grpc + local transports; cuda_ipc: GPU pools, two processes")
    p.add_argument("--decode-device", default="cuda:0", help="cuda_ipc: the decode side's GPU")
    p.add_argument("--receive", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receive:
        _receive(page_shape(args.page_mib), args.pages, _config(args))
        return 0
    results = asyncio.run(run_cuda_ipc(args) if args.mode == "cuda_ipc" else run(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
