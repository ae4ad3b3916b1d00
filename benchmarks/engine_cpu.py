"""Engine throughput on CPU with the tiny-random model: output tokens/s at several numbers of
concurrent requests (fixed prompt and output lengths, ignore_eos), the whole engine step loop
included (scheduling, batch preparation, forward, sampling, detokenization).

    python -m benchmarks.engine_cpu [--concurrency 1 8 64] [--prompt-len 32] [--output-len 32]
                                     [--threads 1] [--json results.json]

(Run it as a module from the repository root: benchmarks/kernels.py would shadow the kernels
package if the script directory came first on sys.path.)"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.loader import load_model
from services.engine.sampling_params import SamplingParams


def measure(engine: LLMEngine, concurrency: int, prompt_len: int, output_len: int) -> dict:
    params = SamplingParams(temperature=0.8, seed=0, max_tokens=output_len, ignore_eos=True)
    vocab = engine.model_config.vocab_size
    start = time.perf_counter()
    for i in range(concurrency):
        # Distinct prompts, so the prefix cache does not turn this into a decode-only benchmark.
        prompt = [(i * 7919 + j * 31) % (vocab - 1) + 1 for j in range(prompt_len)]
        engine.add_request(f"r{i}", prompt, params)
    first_token: dict[str, float] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            first_token.setdefault(out.request_id, time.perf_counter() - start)
        steps += 1
    elapsed = time.perf_counter() - start
    engine.check_integrity()
    return {
        "concurrency": concurrency, "prompt_len": prompt_len, "output_len": output_len,
        "steps": steps, "seconds": elapsed,
        "output_tokens_per_s": concurrency * output_len / elapsed,
        "median_ttft_s": statistics.median(first_token.values()),
        "mean_step_ms": 1000 * elapsed / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model("tiny-random", device="cpu")
    config = EngineConfig(cache=CacheConfig(block_size=16, num_blocks=1024),
                          scheduler=SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=2048))
    engine = LLMEngine(config, loaded)
    measure(engine, 2, args.prompt_len, 4)                  # warm-up
    rows = [measure(LLMEngine(config, loaded), c, args.prompt_len, args.output_len)
            for c in args.concurrency]

    print(f"tiny-random on CPU ({platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s)), prompt {args.prompt_len}, output {args.output_len}")
    print(f"{'concurrency':>11} {'output tok/s':>13} {'median TTFT ms':>15} {'step ms':>8} {'steps':>6}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['output_tokens_per_s']:>13.1f} "
              f"{1000 * r['median_ttft_s']:>15.1f} {r['mean_step_ms']:>8.2f} {r['steps']:>6}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": "tiny-random", "device": "cpu", "threads": args.threads,
                       "torch": torch.__version__, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
