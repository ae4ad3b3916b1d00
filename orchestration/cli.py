"""`tandem`: the command line. Each subcommand lives in orchestration/commands/<name>.py and
exposes `add_arguments(parser)` and `run(args) -> int`; modules load only when their command runs,
so `tandem generate` never imports Ray or the load generator."""

from __future__ import annotations

import argparse
import importlib
import sys

from services.engine.errors import TandemError

COMMANDS = {
    "serve": "start a gateway with prefill/decode (or colocated) workers",
    "generate": "generate from one prompt, streamed (in-process, or from a server with --target)",
    "bench": "load-test a Tandem or OpenAI-compatible server",
    "quantize": "write a quantized checkpoint (w8a16, w8a8, int8, gptq-w4a16, awq-w4a16)",
    "demo": "start a local cluster on the default model, run a short load test, print the result",
}


def _command_module(name: str):
    return importlib.import_module(f"orchestration.commands.{name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _command_module(name).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return _command_module(args.command).run(args)
    except TandemError as exc:
        print(f"tandem {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
