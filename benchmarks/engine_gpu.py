"""The engine on one GPU beside its ceilings and the HF transformers peer, in one run.

    python -m benchmarks.engine_gpu [--model llama-3.1-8b-random] [--json out.json]
                                    [--skip-hf] [--int8] [--quick]

Llama-3.1-8B shapes with random bf16 weights (`llama-3.1-8b-random`), fixed output lengths, EOS
ignored. Measured in this run: the copy bandwidth (a large device-to-device copy, bytes read +
written) and the bf16 matmul rate (8192^3); from them each figure's roofline:

- a decode step: (weight bytes read + KV bytes read) / copy bandwidth, where a step reads every
  weight but the embedding table (one row per token; 1.05 GB of the 8B's 16.06);
- a workload (a batch of requests end to end): its prefill FLOPs (2 x non-embedding params x
  prompt tokens + causal attention) at the matmul rate, plus every decode step's weight and KV
  bytes at the copy rate.

Ours is `LLMEngine.step` in a loop (scheduling, batch preparation, forward, sampling, outputs),
configured as a worker runs it (token ids out; the gateway detokenizes for its clients), after
`warm_up()` (kernels compiled, every kind of CUDA graph captured); the eager rows run the same
engine with `enforce_eager`. The HF peer is transformers' eager `generate` on the same
shapes. Run it as a module from the repository root (benchmarks/kernels.py would shadow
the kernels package otherwise)."""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import dataclass

import torch

from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.engine.engine import LLMEngine
from services.engine.loader import LoadedModel, load_model
from services.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Ceilings:
    copy_bytes_per_s: float
    matmul_flops_per_s: float


def measure_ceilings(device: torch.device) -> Ceilings:
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = _time_cuda(lambda: dst.copy_(src), repeats=20)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    mm_s = _time_cuda(lambda: a @ b, repeats=20)
    del src, dst, a, b
    torch.cuda.empty_cache()
    return Ceilings(2 * 2 * 2**30 / copy_s, 2 * 8192**3 / mm_s)


def _time_cuda(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


class Rooflines:
    def __init__(self, loaded: LoadedModel, ceilings: Ceilings) -> None:
        config = loaded.config
        params = list(loaded.model.parameters())   # a tied LM head is listed once, as embed
        embed = loaded.model.model.embed_tokens.weight
        # A step reads every weight but the embedding table (a row per token), unless the table
        # is also the LM head.
        self.weight_bytes = sum(p.numel() * p.element_size() for p in params)
        if not loaded.config.tie_word_embeddings:
            self.weight_bytes -= embed.numel() * embed.element_size()
        self.matmul_params = sum(p.numel() for p in params) - embed.numel()
        self.kv_bytes_per_token = config.kv_bytes_per_token
        self.attention_width = config.num_layers * config.num_heads * config.head_dim
        self.ceilings = ceilings

    def step_s(self, batch: int, context: int) -> float:
        kv = batch * context * self.kv_bytes_per_token
        return (self.weight_bytes + kv) / self.ceilings.copy_bytes_per_s

    def prefill_s(self, prompt_len: int) -> float:
        flops = 2 * self.matmul_params * prompt_len + 2 * self.attention_width * prompt_len ** 2
        return flops / self.ceilings.matmul_flops_per_s

    def lone_prefill_s(self, prompt_len: int) -> float:
        """One prompt alone in its step: its FLOPs, or its one read of the weights if longer."""
        return max(self.prefill_s(prompt_len), self.step_s(1, prompt_len))

    def workload_s(self, num: int, prompt_len: int, output_len: int) -> float:
        decode = sum(self.step_s(num, prompt_len + i) for i in range(output_len - 1))
        return num * self.prefill_s(prompt_len) + decode


def make_engine(loaded: LoadedModel, *, enforce_eager: bool = False, max_model_len: int = 9216,
                max_num_seqs: int = 256, step_tokens: int | None = None) -> tuple[LLMEngine, float]:
    # step_tokens None: the device's default budget.
    scheduler = SchedulerConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                max_num_batched_tokens=step_tokens)
    config = EngineConfig(enforce_eager=enforce_eager, detokenize=False,
                          cache=CacheConfig(gpu_memory_fraction=0.8), scheduler=scheduler)
    engine = LLMEngine(config, loaded)
    return engine, engine.warm_up().seconds


def _prompts(n: int, length: int, vocab: int, salt: int) -> list[list[int]]:
    # Distinct prompts, so the prefix cache does not turn prefill into a lookup.
    return [[(salt * 1_000_003 + i * 7919 + j * 31) % (vocab - 2) + 1 for j in range(length)]
            for i in range(n)]


_run_counter = iter(range(1, 1_000_000))


def run_workload(engine: LLMEngine, num: int, prompt_len: int, output_len: int,
                 params: SamplingParams | None = None) -> dict:
    """num requests at once, to the end: output tok/s, TTFTs, and the median pure-decode step."""
    salt = next(_run_counter)
    params = params or SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    for i, prompt in enumerate(_prompts(num, prompt_len, engine.model_config.vocab_size, salt)):
        engine.add_request(f"w{salt}-{i}", prompt, params)
    first: dict[str, float] = {}
    decode_steps: list[float] = []
    while engine.has_unfinished_requests():
        before = time.perf_counter()
        prefilling = bool(engine.scheduler.waiting) or any(
            r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running)
        outputs = engine.step()
        now = time.perf_counter()
        if not prefilling:
            decode_steps.append(now - before)
        for out in outputs:
            first.setdefault(out.request_id, now - start)
    elapsed = time.perf_counter() - start
    engine.check_integrity()
    return {"requests": num, "prompt_len": prompt_len, "output_len": output_len,
            "seconds": elapsed, "output_tok_s": num * output_len / elapsed,
            "ttft_first_ms": 1000 * min(first.values()),
            "ttft_median_ms": 1000 * statistics.median(first.values()),
            "decode_step_ms": 1000 * statistics.median(decode_steps) if decode_steps else None}


def closed_loop(engine: LLMEngine, streams: int, prompt_len: int, output_len: int,
                seconds: float) -> dict:
    """`streams` requests kept in flight (a finished one replaced at once, as clients in a closed
    loop do), their output lengths spread over [output_len / 2, 1.5 output_len) so that they do
    not finish together: new prompts keep joining running decodes in mixed steps. Output tok/s
    over the window and the median step."""
    salt = next(_run_counter)
    vocab = engine.model_config.vocab_size
    prompts = iter(_prompts(20_000, prompt_len, vocab, salt))

    def add(index: int) -> None:
        length = output_len // 2 + (index * 7919) % output_len
        engine.add_request(f"c{salt}-{index}", next(prompts), SamplingParams(
            temperature=0, max_tokens=length, ignore_eos=True))
    for index in range(streams):
        add(index)
    start, tokens, steps, added = time.perf_counter(), 0, [], streams
    while time.perf_counter() - start < seconds:
        before = time.perf_counter()
        for out in engine.step():
            tokens += len(out.new_token_ids)
            if out.finished:
                add(added)
                added += 1
        steps.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - start
    for request in [*engine.scheduler.running, *engine.scheduler.waiting]:
        engine.abort(request.request_id)
    while engine.has_unfinished_requests():
        engine.step()
    engine.check_integrity()
    return {"output_tok_s": tokens / elapsed, "step_ms": 1000 * statistics.median(steps)}


def ttft_ms(engine: LLMEngine, prompt_len: int, repeats: int = 7) -> float:
    """Median TTFT of single requests one after another (a prefill alone in its step)."""
    return statistics.median(run_workload(engine, 1, prompt_len, 2)["ttft_first_ms"]
                             for _ in range(repeats))


PROMPT_TTFT_LENGTHS = (128, 512, 1000)


def replay_ms(engine: LLMEngine, num: int, context: int) -> float:
    """GPU time of the decode graph alone (no scheduling, no sampling): what the host adds to a
    step is the engine's step minus this."""
    from services.engine.cuda_graphs import DecodeInputs

    block_size = engine.kv.block_size
    width = -(-context // block_size)
    tables = torch.arange(num * width, dtype=torch.int32).reshape(num, width) % engine.kv.num_blocks
    inputs = DecodeInputs(torch.ones(num, dtype=torch.int64),
                          torch.full((num,), context - 1, dtype=torch.int64),
                          torch.full((num,), -1, dtype=torch.int64),
                          torch.full((num,), context, dtype=torch.int32), tables)
    return 1000 * _time_cuda(lambda: engine.runner.graphs.run(inputs), repeats=20)


def _int8_model(preset: str, device: torch.device, scheme: str) -> LoadedModel:
    """The preset's weights quantized to INT8 on the GPU, as `tandem quantize` does, unwritten."""
    from benchmarks.int4_decode_step import build
    from services.engine.loader import model_source

    model, config = build(scheme, device, preset)
    source = model_source(preset)
    return LoadedModel(model, config, source.tokenizer, source.eos_token_ids)


def hf_peer(cases: list[tuple[int, int, int]]) -> dict:
    """transformers' eager generate on the same shapes (its own random weights)."""
    import transformers

    from services.engine.presets import llama_31_8b_config

    hf_config = transformers.LlamaConfig(**{k: v for k, v in llama_31_8b_config().items()
                                            if k not in ("architectures", "dtype")})
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(hf_config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    results = {}
    for num, prompt_len, output_len in cases:
        ids = torch.tensor(_prompts(num, prompt_len, hf_config.vocab_size, 0), device="cuda")
        kwargs = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False,
                      attention_mask=torch.ones_like(ids), pad_token_id=0)
        with torch.no_grad():
            model.generate(ids[:1, :16], max_new_tokens=2, attention_mask=torch.ones_like(ids[:1, :16]),
                           pad_token_id=0)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, **kwargs)
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        results[f"{num}x{prompt_len}/{output_len}"] = {
            "output_tok_s": num * output_len / elapsed, "ms_per_step": 1000 * elapsed / output_len}
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b-random")
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--quick", action="store_true", help="skip the decode-heavy and 8k rows")
    parser.add_argument("--int8", action="store_true", help="add the INT8 rows (w8a16 and int8)")
    parser.add_argument("--step-tokens", type=int, nargs="*", default=[],
                        help="step token budgets (max_num_batched_tokens) to run the 256-request "
                             "workloads with, beside the default's rows")
    args = parser.parse_args()
    device = torch.device("cuda")
    ceilings = measure_ceilings(device)
    print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; copy {ceilings.copy_bytes_per_s / 1e12:.2f} TB/s, "
          f"bf16 matmul {ceilings.matmul_flops_per_s / 1e12:.0f} TFLOP/s", flush=True)
    rows: list[dict] = []
    start_load = time.perf_counter()
    loaded = load_model(args.model, device=device)
    roof = Rooflines(loaded, ceilings)
    print(f"# model loaded in {time.perf_counter() - start_load:.1f} s; weights "
          f"{roof.weight_bytes / 1e9:.2f} GB", flush=True)

    def add(figure: str, ours: float | None, limit: float | None, unit: str, **extra) -> None:
        ratio = (ours / limit) if ours and limit else None
        rows.append({"figure": figure, "ours": ours, "limit": limit, "unit": unit,
                     "ratio": ratio, **extra})
        print(f"{figure:<52} ours {ours if ours is None else round(ours, 2)!s:>10} {unit:<6} "
              f"limit {limit if limit is None else round(limit, 2)!s:>10}  "
              f"ratio {'' if ratio is None else f'{ratio:.2f}'}  {extra or ''}", flush=True)

    engine, warm_s = make_engine(loaded)
    print(f"# warm-up {warm_s:.1f} s, {engine.runner.num_graphs} graphs, "
          f"KV pool {engine.kv.num_blocks} blocks", flush=True)
    first = run_workload(engine, 1, 512, 8)
    later = [run_workload(engine, 1, 512, 8)["ttft_first_ms"] for _ in range(3)]
    print(f"# TTFT of the first four 512-token requests: {first['ttft_first_ms']:.1f}, "
          + ", ".join(f"{t:.1f}" for t in later) + " ms", flush=True)
    warm = {"ttft_first_ms": later[-1]}
    add("TTFT, first 512-token request after start (ms)", first["ttft_first_ms"],
        warm["ttft_first_ms"], "ms", note="limit = a warm request's TTFT")
    graphed_ttft = {n: ttft_ms(engine, n) for n in PROMPT_TTFT_LENGTHS}
    for n, ms in graphed_ttft.items():
        add(f"TTFT, one {n}-token prompt (median of 7, ms)", ms, 1000 * roof.lone_prefill_s(n),
            "ms")
    one = run_workload(engine, 1, 512, 128)
    add("decode step, batch 1, ctx ~576 (ms)", one["decode_step_ms"], 1000 * roof.step_s(1, 576), "ms")
    prefill = run_workload(engine, 1, 2048, 2)
    add("prefill 2,048 tokens (TTFT, ms)", prefill["ttft_first_ms"], 1000 * roof.prefill_s(2048), "ms")
    for num in (64, 256):
        result = run_workload(engine, num, 512, 128)
        add(f"decode step, batch {num}, ctx ~576 (ms)", result["decode_step_ms"],
            1000 * roof.step_s(num, 576), "ms")
        add(f"output tok/s, {num} x 512/128", result["output_tok_s"],
            num * 128 / roof.workload_s(num, 512, 128), "tok/s", ttft_median_ms=result["ttft_median_ms"])
    sampled = run_workload(engine, 64, 512, 128, SamplingParams(temperature=0.8, top_p=0.9,
                                                                 max_tokens=128, ignore_eos=True))
    add("output tok/s, 64 x 512/128 sampled (T 0.8, top-p 0.9)", sampled["output_tok_s"],
        64 * 128 / roof.workload_s(64, 512, 128), "tok/s", decode_step_ms=sampled["decode_step_ms"])
    if not args.quick:
        heavy = run_workload(engine, 256, 128, 1024)
        add("output tok/s, 256 x 128/1,024", heavy["output_tok_s"],
            256 * 1024 / roof.workload_s(256, 128, 1024), "tok/s", decode_step_ms=heavy["decode_step_ms"])
        long = run_workload(engine, 1, 8192, 64)
        add("decode step, batch 1, ctx 8k (ms)", long["decode_step_ms"],
            1000 * roof.step_s(1, 8192 + 32), "ms")
    for num in (1, 64, 256):
        add(f"decode forward replayed alone (GPU), batch {num}, ctx 576 (ms)",
            replay_ms(engine, num, 576), 1000 * roof.step_s(num, 576), "ms")
    # Mixed steps (prompts joining running decodes) with their pieces replayed, then eager.
    for streams in (16, 64, 256):
        pieces = closed_loop(engine, streams, 512, 128, 10.0)
        engine.runner.piecewise_graphs, kept = None, engine.runner.piecewise_graphs
        eager_mixed = closed_loop(engine, streams, 512, 128, 10.0)
        engine.runner.piecewise_graphs = kept
        add(f"closed loop, {streams} streams x 512/64-191, output tok/s", pieces["output_tok_s"],
            eager_mixed["output_tok_s"], "tok/s", note="limit = mixed steps eager, same engine",
            step_ms=pieces["step_ms"], eager_step_ms=eager_mixed["step_ms"])
    del kept
    del engine
    gc.collect()
    torch.cuda.empty_cache()

    for step_tokens in args.step_tokens:
        engine, _ = make_engine(loaded, step_tokens=step_tokens)
        cases = [(256, 512, 128)] + ([] if args.quick else [(256, 128, 1024)])
        for num, prompt_len, output_len in cases:
            result = run_workload(engine, num, prompt_len, output_len)
            limit = num * output_len / roof.workload_s(num, prompt_len, output_len)
            add(f"output tok/s, {num} x {prompt_len}/{output_len:,}, {step_tokens:,}-token steps",
                result["output_tok_s"], limit, "tok/s", ttft_median_ms=result["ttft_median_ms"],
                decode_step_ms=result["decode_step_ms"])
        del engine
        gc.collect()
        torch.cuda.empty_cache()

    if args.int8:
        bf16_step = next(r["ours"] for r in rows if r["figure"].startswith("decode step, batch 1,"))
        bf16_256 = next(r["ours"] for r in rows if r["figure"] == "output tok/s, 256 x 512/128")
        # w8a16 keeps 16-bit activations everywhere; int8 quantizes them above 32 rows.
        for scheme in ("w8a16", "int8"):
            int8 = _int8_model(args.model, device, scheme)
            engine, _ = make_engine(int8)
            one = run_workload(engine, 1, 512, 128)
            add(f"INT8 {scheme} decode step, batch 1, ctx ~576 (ms)", one["decode_step_ms"],
                bf16_step, "ms", note="limit = our bf16 step")
            result = run_workload(engine, 256, 512, 128)
            add(f"INT8 {scheme} output tok/s, 256 x 512/128", result["output_tok_s"], bf16_256,
                "tok/s", note="limit = our bf16 figure", decode_step_ms=result["decode_step_ms"])
            del engine, int8
            gc.collect()
            torch.cuda.empty_cache()

    eager, _ = make_engine(loaded, enforce_eager=True)
    for num in (1, 64):
        result = run_workload(eager, num, 512, 64)
        add(f"eager (no graphs) decode step, batch {num} (ms)", result["decode_step_ms"],
            1000 * roof.step_s(num, 544), "ms")
    for n in PROMPT_TTFT_LENGTHS:
        add(f"eager (no graphs) TTFT, one {n}-token prompt (ms)", ttft_ms(eager, n),
            graphed_ttft[n], "ms", note="limit = the same with graphs")
    del eager
    gc.collect()
    torch.cuda.empty_cache()

    hf = {}
    if not args.skip_hf:
        del loaded
        gc.collect()
        torch.cuda.empty_cache()
        hf = hf_peer([(1, 512, 32), (64, 512, 128)])
        for case, result in hf.items():
            print(f"HF eager generate {case}: {result['output_tok_s']:.0f} tok/s, "
                  f"{result['ms_per_step']:.1f} ms/step", flush=True)
        ours_256 = next(r["ours"] for r in rows if r["figure"] == "output tok/s, 256 x 512/128")
        print(f"ours at 256 / HF at 64: {ours_256 / hf['64x512/128']['output_tok_s']:.1f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "date": time.strftime("%Y-%m-%d"),
                       "torch": torch.__version__, "copy_bytes_per_s": ceilings.copy_bytes_per_s,
                       "matmul_flops_per_s": ceilings.matmul_flops_per_s, "rows": rows, "hf": hf},
                      f, indent=2)


if __name__ == "__main__":
    main()
