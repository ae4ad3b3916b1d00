"""Where one request's time to first token goes on the way through the server, layer by layer.

    python -m benchmarks.served_ttft_breakdown [--model tiny-random] [--input-len 512]
        [--requests 200] [--warmup 20] [--engine-arg=--device=cpu ...]
        [--worker-arg=--engine-process] [--json PATH]

One request at a time, each with a text of --input-len tokens (as `tandem bench` counts them)
or the ids of as many tokens as the gateway runs for it (the text's plus BOS), that shares no
prefix block with another, 2 output tokens, EOS ignored; the same engine settings for
every layer:

1. `engine`: the engine's own step loop (LLMEngine.step until the first token), in a child
   process of its own;
2. `engine thread`: the same engine behind an EngineLoop (add_request from an event loop, first
   output out of its stream): the hand-off into the engine thread and back;
3. `worker`: a colocated worker in a process of its own (`python -m services.decode
   --colocated`), called directly with token ids the way the gateway calls it (one Decode with
   prefill_here and room_tokens), to the first TokenChunk; `worker + Reserve` makes a Reserve
   call first (how the gateway called a colocated worker before room_tokens);
4. `gateway`: `python -m services.gateway` in front of that worker, `Generation/Generate` with
   text (tokenization, admission, routing and the worker calls all count), to the first
   GenerateResponse with tokens.

Every round runs each layer once, back to back, the order rotating, so drift in the machine's
load reaches every layer alike. Printed: p50 / p90 / mean per layer; per step between layers,
the difference of the medians and the median of the per-round differences; then, timed in this
process, what the gateway does per request before any I/O (tokenizing the prompt text, building
and serializing the DecodeRequest of its ids).

The child engine and the worker's are alive at once: on a GPU give each a share, e.g.
`--model llama-3.1-8b-random --engine-arg=--max-model-len=4096
--engine-arg=--gpu-memory-fraction=0.4` (8B shapes, random bf16 weights)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.served import served_prompt_len
from services import wire
from services.engine.sampling_params import SamplingParams
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from services.rpc.tandem.v1 import worker_pb2, worker_pb2_grpc

OUTPUT_TOKENS = 2


def _params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)


def _engine_config(args: argparse.Namespace):
    from services.worker.cli import add_engine_arguments, engine_config_from_args
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return engine_config_from_args(parser.parse_args(["--model", args.model, *args.engine_arg]))


def _prompts(rng: random.Random, vocab: int, n: int, count: int) -> list[list[int]]:
    return [[rng.randrange(1, vocab) for _ in range(n)] for _ in range(count)]


# --- 1 and 2: the engine alone, and behind its thread (a child process) -------------------------
def engine_child(args: argparse.Namespace) -> None:
    """Serves one timed request per line on stdin ("engine" or "thread"), its TTFT in seconds
    per line on stdout; "READY" once warmed up."""
    from services.engine.engine import LLMEngine
    from services.engine.engine_loop import EngineLoop
    engine = LLMEngine(dataclasses.replace(_engine_config(args), detokenize=False))
    engine.warm_up()
    rng = random.Random(1)
    vocab = engine.model_config.vocab_size
    prompt_len = served_prompt_len(engine.tokenizer, args.input_len)

    def alone(rid: str, prompt: list[int]) -> float:
        engine.add_request(rid, prompt, _params())
        start, first = time.perf_counter(), None
        while engine.has_unfinished_requests():
            outputs = engine.step()
            if first is None and any(o.new_token_ids for o in outputs):
                first = time.perf_counter() - start
        return first

    # One engine thread for every round, as a worker has (not a new thread per request). It
    # sleeps while `alone` steps the engine directly: it wakes only for a call, and none is made
    # then.
    loop = EngineLoop(engine, "bench")
    loop.start()

    async def through_thread(rid: str, prompt: list[int]) -> float:
        start, first = time.perf_counter(), None
        stream = await loop.add_request(rid, prompt, _params())
        async for output in stream:
            if first is None and output.new_token_ids:
                first = time.perf_counter() - start
        return first

    print("READY", flush=True)
    for i, line in enumerate(sys.stdin):
        prompt = _prompts(rng, vocab, prompt_len, 1)[0]
        if line.strip() == "engine":
            seconds = alone(f"e{i}", prompt)
        else:
            seconds = asyncio.run(through_thread(f"t{i}", prompt))
        print(seconds, flush=True)
    loop.stop()


class EngineChild:
    def __init__(self, args: argparse.Namespace) -> None:
        self.proc, _ = _start([sys.executable, "-m", "benchmarks.served_ttft_breakdown",
                               *sys.argv[1:], "--engine-child"], r"^READY", args.ready_timeout)

    def ttft(self, layer: str) -> float:
        self.proc.stdin.write(f"{layer}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())


# --- 3 and 4: the worker and the gateway (separate processes) -----------------------------------
def _start(cmd: list[str], pattern: str, timeout_s: float) -> tuple[subprocess.Popen, re.Match]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return proc, match
    proc.kill()
    raise RuntimeError(f"{cmd[2]} did not start (waiting for {pattern!r})")


async def _worker_ttft(stub, rid: str, ids: list[int], reserve: bool) -> float:
    sampling = wire.sampling_to_proto(_params())
    start, first = time.perf_counter(), None
    if reserve:
        await stub.Reserve(worker_pb2.ReserveRequest(
            request_id=rid, num_tokens=len(ids) + OUTPUT_TOKENS, ttl_ms=30_000))
    async for chunk in stub.Decode(worker_pb2.DecodeRequest(
            request_id=rid, prompt_token_ids=ids, sampling=sampling, prefill_here=True,
            room_tokens=len(ids) + OUTPUT_TOKENS)):
        if first is None and chunk.token_ids:
            first = time.perf_counter() - start
    return first


async def _gateway_ttft(stub, text: str) -> float:
    start, first = time.perf_counter(), None
    async for msg in stub.Generate(gen.GenerateRequest(
            text=text, sampling=wire.sampling_to_proto(_params()))):
        if first is None and msg.token_ids:
            first = time.perf_counter() - start
    return first


LAYERS = ("engine", "engine thread", "worker", "worker + Reserve", "gateway")


async def measure(args: argparse.Namespace, child: EngineChild, worker: str,
                  gateway: str) -> dict[str, list[float]]:
    """Every layer once per round, the order rotating; rounds after the warm-up are kept."""
    from loadgen.datasets.random_text import text_of_length
    from loadgen.tokens import load_token_counter
    from services.engine.loader import load_tokenizer
    counter = load_token_counter(args.model)
    tokenizer = load_tokenizer(args.model).tokenizer
    vocab, prompt_len = tokenizer.vocab_size, served_prompt_len(tokenizer, args.input_len)
    rng, text_rng = random.Random(2), np.random.default_rng(3)
    times: dict[str, list[float]] = {name: [] for name in LAYERS}
    async with grpc.aio.insecure_channel(worker) as wch, grpc.aio.insecure_channel(gateway) as gch:
        wstub, gstub = worker_pb2_grpc.DecodeWorkerStub(wch), gen_grpc.GenerationStub(gch)
        for i in range(args.warmup + args.requests):
            ids = _prompts(rng, vocab, prompt_len, 2)
            text = text_of_length(args.input_len, counter, text_rng)
            runs = {"engine": lambda: child.ttft("engine"),
                    "engine thread": lambda: child.ttft("thread"),
                    "worker": lambda: _worker_ttft(wstub, f"w{i}", ids[0], reserve=False),
                    "worker + Reserve": lambda: _worker_ttft(wstub, f"r{i}", ids[1], reserve=True),
                    "gateway": lambda: _gateway_ttft(gstub, text)}
            for k in range(len(LAYERS)):
                name = LAYERS[(i + k) % len(LAYERS)]
                value = runs[name]()
                if asyncio.iscoroutine(value):
                    value = await value
                if i >= args.warmup:
                    times[name].append(value)
    return times


def gateway_cpu_work(args: argparse.Namespace) -> dict[str, float]:
    """Microseconds of the gateway's work before any I/O, medians over many repeats."""
    from loadgen.datasets.random_text import text_of_length
    from loadgen.tokens import load_token_counter
    from services.engine.loader import load_tokenizer
    tokenizer = load_tokenizer(args.model).tokenizer
    text = text_of_length(args.input_len, load_token_counter(args.model), np.random.default_rng(4))
    ids = tokenizer.encode(text)

    def median_us(fn, repeats: int = 300) -> float:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return 1e6 * statistics.median(samples)

    sampling = wire.sampling_to_proto(_params())
    return {
        "tokenize prompt text": median_us(lambda: tokenizer.encode(text)),
        "DecodeRequest built + serialized": median_us(lambda: worker_pb2.DecodeRequest(
            request_id="r", prompt_token_ids=ids, sampling=sampling,
            prefill_here=True).SerializeToString()),
    }


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
            "mean_ms": 1000 * statistics.fmean(ordered)}


def report(layers: dict[str, list[float]], cpu: dict[str, float]) -> dict:
    """Per layer p50 / p90 / mean; per step between layers, the difference of the medians and
    the median of the per-round differences (rounds run the layers back to back, so the paired
    figure is the steadier one on a busy machine)."""
    stats = {name: _stats(values) for name, values in layers.items()}
    steps = (("engine", "engine thread", "hand-off into the engine thread and back"),
             ("engine thread", "worker", "gRPC to the worker and back, its handling"),
             ("worker", "worker + Reserve", "a Reserve call before the Decode"),
             ("worker", "gateway", "client leg, tokenize, admission, routing, its worker calls"),
             ("engine", "gateway", "all that serving adds"))
    added = {}
    for a, b, what in steps:
        paired = [y - x for x, y in zip(layers[a], layers[b])]
        added[f"{a} -> {b}"] = {"what": what,
                                "median_difference_ms": stats[b]["p50_ms"] - stats[a]["p50_ms"],
                                "paired_median_ms": 1000 * statistics.median(paired)}
    print(f"{'layer':<18} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}")
    for name, s in stats.items():
        print(f"{name:<18} {s['p50_ms']:>8.2f} {s['p90_ms']:>8.2f} {s['mean_ms']:>8.2f}")
    print(f"\n{'added (ms)':<36} {'of medians':>10} {'paired':>8}")
    for (name, row), (_, _, what) in zip(added.items(), steps):
        print(f"{name:<36} {row['median_difference_ms']:>10.2f} {row['paired_median_ms']:>8.2f}  {what}")
    print("\ngateway work before any I/O (us, median):")
    for name, value in cpu.items():
        print(f"  {value:>7.1f}  {name}")
    return {"layers": stats, "added_ms": added, "gateway_cpu_us": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--engine-arg", action="append", default=[],
                        help="an engine flag for every layer, e.g. --engine-arg=--device=cpu")
    parser.add_argument("--worker-arg", action="append", default=[],
                        help="a flag for the worker only, e.g. --worker-arg=--engine-process")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--json", default=None)
    parser.add_argument("--engine-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:           # layers 1 and 2
        engine_child(args)
        return
    from services.worker.cli import engine_arguments
    procs: list[subprocess.Popen] = []
    try:
        child = EngineChild(args)
        procs.append(child.proc)
        worker, match = _start([sys.executable, "-m", "services.decode", "--colocated", "--port",
                                "0", "--log-level", "WARNING", *args.worker_arg,
                                *engine_arguments(_engine_config(args))],
                               r"LISTENING (\S+)", args.ready_timeout)
        procs.append(worker)
        gateway, gmatch = _start([sys.executable, "-m", "services.gateway", "--mode", "colocated",
                                  "--model", args.model, "--decode", match.group(1),
                                  "--grpc-port", "0", "--http-port", "0", "--log-level", "WARNING"],
                                 r"gateway: gRPC (\S+)", args.ready_timeout)
        procs.append(gateway)
        layers = asyncio.run(measure(args, child, match.group(1), gmatch.group(1)))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
    result = {"date": time.strftime("%Y-%m-%d"), "args": vars(args),
              **report(layers, gateway_cpu_work(args))}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
