"""CPU time the served path spends per streamed token outside the engine, stage by stage, with no
network and no waiting: what bounds a gateway (and a worker's front end) at the engine's token rate.

    python -m benchmarks.gateway_stream_cpu [--model llama-3.1-8b-random] [--streams 256]
        [--tokens 128] [--json PATH]

S streams of T tokens each are fed one token per stream per round (as engine steps produce
them), through what each token meets on its way to a client:
  worker:  TokenChunk built from the engine's output and serialized (services/wire.py)
  gateway: TokenChunk parsed and read (wire.output_fields_from_chunk), detokenized with stop-string
           hold-back (OutputText), then framed for the client as a gRPC GenerateResponse
           (serialized) or as an OpenAI SSE chunk (ResponseWriter.chunk).
Printed: CPU ms per 1,000 tokens for each stage and for the gateway's whole path, and the token
rate one core sustains (tokens/s = 1e6 / µs per token). Only the tokenizer is loaded (presets
need no weights). Random token ids from the vocabulary, so pieces are of every length."""

from __future__ import annotations

import argparse
import json
import random
import time

from services import wire
from services.engine.loader import load_tokenizer
from services.engine.outputs import RequestOutput, RequestTimings
from services.gateway.grpc_api import response_from_delta
from services.gateway.openai_responses import ResponseWriter
from services.gateway.output_text import OutputText
from services.gateway.request import GenerationDelta
from services.rpc.tandem.v1 import worker_pb2

TIMINGS = RequestTimings(0.0, 0.0, 0.0, None)


def run(model: str, streams: int, tokens: int, seed: int = 0) -> dict:
    tokenizer = load_tokenizer(model).tokenizer
    rng = random.Random(seed)
    vocab = tokenizer.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(16)] for _ in range(streams)]
    ids = [[rng.randrange(vocab) for _ in range(tokens)] for _ in range(streams)]
    outputs = [[RequestOutput(f"r{s}", (ids[s][t],), "", None, t == tokens - 1,
                              "length" if t == tokens - 1 else None, 16, 0, TIMINGS)
                for t in range(tokens)] for s in range(streams)]
    stage = {"worker_chunk": 0.0, "gateway_parse": 0.0, "detokenize": 0.0,
             "grpc_response": 0.0, "sse_chunk": 0.0}
    texts = [OutputText(tokenizer, prompts[s], ("\n\n\n",)) for s in range(streams)]
    writers = [ResponseWriter(False, model, f"r{s}", tokenizer) for s in range(streams)]
    clock = time.process_time
    for t in range(tokens):
        for s in range(streams):
            c0 = clock()
            data = wire.chunk_from_output(outputs[s][t]).SerializeToString()
            c1 = clock()
            fields = wire.output_fields_from_chunk(worker_pb2.TokenChunk.FromString(data))
            c2 = clock()
            text = texts[s].add(fields.token_ids)
            if fields.finish_reason is not None:
                text += texts[s].finish()
            c3 = clock()
            delta = GenerationDelta(fields.token_ids, text, None, fields.finish_reason)
            response_from_delta(f"r{s}", delta).SerializeToString()
            c4 = clock()
            writers[s].chunk(delta, False, False)
            c5 = clock()
            stage["worker_chunk"] += c1 - c0
            stage["gateway_parse"] += c2 - c1
            stage["detokenize"] += c3 - c2
            stage["grpc_response"] += c4 - c3
            stage["sse_chunk"] += c5 - c4
    n = streams * tokens
    per_1k = {k: 1e6 * v / n for k, v in stage.items()}     # ms per 1,000 tokens
    gateway_grpc = per_1k["gateway_parse"] + per_1k["detokenize"] + per_1k["grpc_response"]
    gateway_sse = per_1k["gateway_parse"] + per_1k["detokenize"] + per_1k["sse_chunk"]
    return {"model": model, "streams": streams, "tokens_per_stream": tokens,
            "cpu_ms_per_1k_tokens": per_1k, "gateway_grpc_ms_per_1k": gateway_grpc,
            "gateway_sse_ms_per_1k": gateway_sse,
            "one_core_tok_s_grpc": 1e6 / gateway_grpc if gateway_grpc else None,
            "one_core_tok_s_sse": 1e6 / gateway_sse if gateway_sse else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b-random")
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = run(args.model, args.streams, args.tokens)
    for name, ms in result["cpu_ms_per_1k_tokens"].items():
        print(f"{name:<16} {ms:8.2f} ms CPU per 1,000 tokens")
    print(f"gateway, gRPC    {result['gateway_grpc_ms_per_1k']:8.2f} ms per 1,000 tokens "
          f"(one core: {result['one_core_tok_s_grpc']:,.0f} tok/s)")
    print(f"gateway, SSE     {result['gateway_sse_ms_per_1k']:8.2f} ms per 1,000 tokens "
          f"(one core: {result['one_core_tok_s_sse']:,.0f} tok/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
