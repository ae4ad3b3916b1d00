"""The gateway's added latency to TTFT, and how many concurrent streams it holds (CPU, tiny model).

Workers run as separate processes (process launcher), the gateway as another process
(`python -m services.gateway`), the client here. For each request pair, the same-length prompt is
sent once straight to the workers (DecodeWorker.Reserve, PrefillWorker.Prefill: the first token is
back when Prefill returns; the text is tokenized here, untimed) and once through the gateway
(tandem.v1.Generation/Generate with text: tokenization, admission, routing and detokenization are
all counted against the gateway), and once through the HTTP API (/v1/completions, SSE: time to the
first event). The order rotates, prompts never share a prefix block, and the requests run one at
a time, so no path queues behind another. Overhead = gateway TTFT
minus direct TTFT, as a difference of percentiles and as percentiles of the paired differences.

The admission decision alone is timed in-process first (admit + release, no I/O).

Then a concurrency phase opens N streams through the gateway (their starts spread over --ramp-s
seconds, much less than a stream lasts) and checks each one ends with all its tokens; the peak of
the gateway's running-requests gauge is the number it held at once.

    python -m benchmarks.gateway_overhead --requests 300 --streams 2000 --json /tmp/gw.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request

import aiohttp
import grpc

from orchestration.cluster import Cluster, ClusterConfig
from services import wire
from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.loader import load_tokenizer
from services.engine.sampling_params import SamplingParams
from services.gateway.admission import AdmissionController
from services.gateway.config import AdmissionConfig
from services.gateway.workers import WorkerPool
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc
from services.telemetry.metrics import GatewayMetrics

WORDS = "the quick brown fox jumps over the lazy dog and then the cat sat on the mat".split()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def prompt_text(i: int, path: str, num_words: int) -> str:
    # A distinct head per (request, path): no prefix-cache hit helps either path.
    return f"{path}{i:06d} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(num_words))


def start_gateway(prefill: tuple[str, ...], decode: tuple[str, ...]) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "services.gateway", "--grpc-port", "0", "--http-port", "0",
           "--log-level", "WARNING", "--max-queued-requests", "4096", "--queue-timeout", "120"]
    for a in decode:
        cmd += ["--decode", a]
    for a in prefill:
        cmd += ["--prefill", a]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.match(r"gateway: gRPC (\S+)\s+HTTP (\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"gateway did not start: {line!r}")
    return proc, match.group(1), match.group(2)


async def direct_ttft(prefill_stub, decode_stub, rid: str, ids: list[int], params: SamplingParams) -> float:
    sampling = wire.sampling_to_proto(params)
    start = time.perf_counter()
    reserved = await decode_stub.Reserve(worker_pb2.ReserveRequest(
        request_id=rid, num_tokens=len(ids) + params.max_tokens, ttl_ms=30_000))
    first = await prefill_stub.Prefill(worker_pb2.PrefillRequest(
        request_id=rid, prompt_token_ids=ids, sampling=sampling, kv_address=reserved.kv_address,
        kv_block_ids=reserved.block_ids))
    ttft = time.perf_counter() - start
    if first.finish_reason:
        await decode_stub.Cancel(worker_pb2.CancelRequest(request_id=rid))
    else:
        async for _ in decode_stub.Decode(worker_pb2.DecodeRequest(
                request_id=rid, prompt_token_ids=ids, sampling=sampling,
                generated_token_ids=[first.first_token_id])):
            pass
    return ttft


async def gateway_ttft(stub, text: str, params: SamplingParams) -> float:
    start = time.perf_counter()
    ttft = None
    async for _ in stub.Generate(gen.GenerateRequest(text=text, sampling=wire.sampling_to_proto(params))):
        if ttft is None:
            ttft = time.perf_counter() - start
    return ttft


async def http_ttft(session, url: str, text: str, params: SamplingParams) -> float:
    """Time to the first SSE event carrying text, through /v1/completions."""
    body = {"prompt": text, "max_tokens": params.max_tokens, "temperature": params.temperature,
            "ignore_eos": params.ignore_eos, "stream": True}
    start = time.perf_counter()
    ttft = None
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        async for line in resp.content:
            if ttft is None and line.startswith(b"data: {"):
                ttft = time.perf_counter() - start
    return ttft


def _summary(direct: list[float], via: list[float]) -> dict:
    diffs = [g - d for g, d in zip(via, direct)]
    ms = lambda s: round(s * 1000, 3)  # noqa: E731
    return {
        "ttft_ms": {"p50": ms(percentile(via, 50)), "p99": ms(percentile(via, 99))},
        "overhead_ms_percentile_difference": {"p50": ms(percentile(via, 50) - percentile(direct, 50)),
                                              "p99": ms(percentile(via, 99) - percentile(direct, 99))},
        "overhead_ms_paired": {"p50": ms(percentile(diffs, 50)), "p99": ms(percentile(diffs, 99)),
                               "mean": ms(statistics.fmean(diffs))},
    }


async def overhead_phase(args, handle, gateway_address: str, http_url: str) -> dict:
    tokenizer = load_tokenizer("tiny-random").tokenizer
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    async with grpc.aio.insecure_channel(handle.prefill_addresses[0]) as pch, \
            grpc.aio.insecure_channel(handle.decode_addresses[0]) as dch, \
            grpc.aio.insecure_channel(gateway_address) as gch, aiohttp.ClientSession() as session:
        prefill, decode = worker_pb2_grpc.PrefillWorkerStub(pch), worker_pb2_grpc.DecodeWorkerStub(dch)
        stub = gen_grpc.GenerationStub(gch)
        times: list[list[float]] = [[], [], []]          # direct, gRPC gateway, HTTP gateway
        for i in range(args.warmup + args.requests):
            texts = [prompt_text(i, tag, args.prompt_words) for tag in ("d", "g", "h")]
            ids = tokenizer.encode(texts[0])
            runs = [lambda: direct_ttft(prefill, decode, f"bench-{i}", ids, params),
                    lambda: gateway_ttft(stub, texts[1], params),
                    lambda: http_ttft(session, http_url, texts[2], params)]
            got = {}
            for k in (i % 3, (i + 1) % 3, (i + 2) % 3):  # rotate the order
                got[k] = await runs[k]()
            if i >= args.warmup:
                for k in range(3):
                    times[k].append(got[k])
    direct = times[0]
    return {
        "requests": len(direct), "prompt_tokens": len(ids), "max_tokens": args.max_tokens,
        "direct_ttft_ms": {"p50": round(percentile(direct, 50) * 1000, 3),
                           "p99": round(percentile(direct, 99) * 1000, 3)},
        "grpc": _summary(direct, times[1]),
        "http": _summary(direct, times[2]),
    }


async def admission_phase(num: int = 20000) -> dict:
    """The admission decision alone, in-process: AdmissionController.admit + release on four
    decode and two prefill workers fed load reports (no I/O, as in the gateway)."""
    pool = WorkerPool(("p0:1", "p1:1"), tuple(f"d{i}:1" for i in range(4)), 0.05, 1.0)
    for i, w in enumerate(pool.decode):
        w.apply_report(worker_pb2.LoadReport(block_size=16, num_blocks=4096, free_blocks=4000 - i),
                       time.monotonic())
    for w in pool.prefill:
        w.apply_report(worker_pb2.LoadReport(block_size=16, num_blocks=4096, free_blocks=4096,
                                             queued_prompt_tokens=100), time.monotonic())
    admission = AdmissionController(AdmissionConfig(tenant_tokens_per_s=1e9), pool, GatewayMetrics(),
                                    disaggregated=True)
    deadline = time.monotonic() + 3600
    samples = []
    for i in range(num):
        start = time.perf_counter()
        ticket = await admission.admit(f"r{i}", "tenant", 200, 456, deadline)
        samples.append(time.perf_counter() - start)
        admission.release(ticket)
    await pool.stop()
    us = lambda s: round(s * 1e6, 2)  # noqa: E731
    return {"decisions": num, "admit_us": {"p50": us(percentile(samples, 50)),
                                           "p99": us(percentile(samples, 99))}}


def running_gauge(http_url: str) -> float:
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("tandem_running_requests "):
                return float(line.split()[1])
    return 0.0


async def concurrency_phase(args, gateway_address: str, http_url: str) -> dict:
    params = wire.sampling_to_proto(SamplingParams(temperature=0.8, max_tokens=args.stream_tokens,
                                                   ignore_eos=True))
    peak = 0.0
    done = asyncio.Event()

    async def sample_gauge():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await asyncio.to_thread(running_gauge, http_url))
            await asyncio.sleep(0.05)

    async with grpc.aio.insecure_channel(gateway_address) as ch:
        stub = gen_grpc.GenerationStub(ch)

        errors: dict[str, int] = {}

        async def one(i: int) -> int:
            n = 0
            await asyncio.sleep(args.ramp_s * i / args.streams)
            try:
                async for msg in stub.Generate(gen.GenerateRequest(text=f"stream {i} go", sampling=params)):
                    n += len(msg.token_ids)
            except grpc.aio.AioRpcError as exc:
                key = f"{exc.code().name}: {exc.details()}"
                errors[key] = errors.get(key, 0) + 1
                return -1
            return n

        sampler = asyncio.create_task(sample_gauge())
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(args.streams)))
        elapsed = time.perf_counter() - start
        done.set()
        await sampler
    complete = sum(1 for c in counts if c == args.stream_tokens)
    return {"streams": args.streams, "ramp_s": args.ramp_s, "tokens_each": args.stream_tokens, "complete": complete,
            "failed": sum(1 for c in counts if c < 0), "errors": errors, "peak_running_at_gateway": int(peak),
            "seconds": round(elapsed, 2), "output_tokens_per_s": round(complete * args.stream_tokens / elapsed, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--prompt-words", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--stream-tokens", type=int, default=16)
    p.add_argument("--ramp-s", type=float, default=2.0, help="stream starts spread over this long")
    p.add_argument("--num-blocks", type=int, default=16384)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    engine = EngineConfig(device="cpu", cache=CacheConfig(num_blocks=args.num_blocks),
                          scheduler=SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=2048))
    cluster = Cluster(ClusterConfig(mode="disaggregated", launcher="process", engine=engine,
                                    kv_transport="grpc"))
    handle = cluster.start()
    gateway = None
    try:
        gateway, grpc_address, http_url = start_gateway(handle.prefill_addresses, handle.decode_addresses)
        result = {"date": time.strftime("%Y-%m-%d"),
                  "admission": asyncio.run(admission_phase()),
                  "overhead": asyncio.run(overhead_phase(args, handle, grpc_address, http_url))}
        if args.streams:
            result["concurrency"] = asyncio.run(concurrency_phase(args, grpc_address, http_url))
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        cluster.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
