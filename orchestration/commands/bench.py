"""`tandem bench`: the load generator (loadgen/) against Tandem or any OpenAI-compatible server."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadgen.cli import add_arguments as add_bench_arguments
    add_bench_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from loadgen.cli import run as run_bench_command
    return run_bench_command(args)
