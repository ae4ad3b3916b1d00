"""`tandem generate`: one prompt, streamed to stdout, from an engine run in this process, or with
--target HOST:PORT from a running server's gRPC API (services/gateway/client.py).

With --json, prints one JSON object at the end instead of streaming: prompt and output token ids,
text, finish reason and timings. The output stream is an iterator of RequestOutputs, so another
source of them (a remote server) can be plugged in beside `_local_outputs`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from services.engine.outputs import RequestOutput
from services.engine.sampling_params import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--model", default=None,
                        help="a preset name (tiny-random, llama-3.1-8b-random) or an HF checkpoint "
                             "directory (default: tiny-random; with --target: the server's model)")
    parser.add_argument("--target", default=None, metavar="HOST:PORT",
                        help="stream from a running server's gRPC API instead of a local engine")
    parser.add_argument("--api-key", default=None, help="with --target: the server's API key")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 disables")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    parser.add_argument("--ignore-eos", action="store_true", help="generate past end-of-sequence")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with token ids, text, finish reason, timings")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            seed=args.seed, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)
    prompt_token_ids, outputs = (_remote_outputs(args, params) if args.target
                                 else _local_outputs(args, params))
    token_ids: list[int] = []
    text: list[str] = []
    last: RequestOutput | None = None
    for last in outputs:
        token_ids += last.new_token_ids
        text.append(last.text_delta)
        if not args.json:
            sys.stdout.write(last.text_delta)
            sys.stdout.flush()
    if args.json:
        print(json.dumps(_summary(prompt_token_ids, token_ids, "".join(text), last), ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


def _local_outputs(args: argparse.Namespace,
                   params: SamplingParams) -> tuple[list[int], Iterator[RequestOutput]]:
    # Imported here so that `tandem generate --help` stays fast.
    from services.engine.config import EngineConfig
    from services.engine.engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=args.model or "tiny-random", device=args.device))
    prompt_token_ids = engine.tokenizer.encode(args.prompt)
    engine.add_request("generate", prompt_token_ids, params)

    def outputs() -> Iterator[RequestOutput]:
        while engine.has_unfinished_requests():
            yield from engine.step()

    return prompt_token_ids, outputs()


def _remote_outputs(args: argparse.Namespace,
                    params: SamplingParams) -> tuple[None, Iterator[RequestOutput]]:
    from services.gateway.client import remote_outputs
    return remote_outputs(args.target, args.prompt, params, model=args.model or "",
                          api_key=args.api_key)


def _summary(prompt_token_ids: list[int] | None, token_ids: list[int], text: str,
             last: RequestOutput | None) -> dict:
    timings = last.timings if last else None
    return {
        "prompt_token_ids": prompt_token_ids,           # None from a server: it tokenizes
        "num_prompt_tokens": last.num_prompt_tokens if last else len(prompt_token_ids or ()),
        "token_ids": token_ids,
        "text": text,
        "finish_reason": last.finish_reason if last else None,
        "num_cached_tokens": last.num_cached_tokens if last else 0,
        "timings": None if timings is None else {
            "arrival": timings.arrival,
            "first_scheduled": timings.first_scheduled,
            "first_token": timings.first_token,
            "finished": timings.finished,
            "ttft_s": None if timings.first_token is None else timings.first_token - timings.arrival,
            "e2e_s": None if timings.finished is None else timings.finished - timings.arrival,
        },
    }
