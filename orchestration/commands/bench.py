"""`tandem bench`: the load generator (loadgen/) against Tandem or any OpenAI-compatible server;
`tandem bench compare RESULT.json ...`: one report overlaying saved results."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loadgen.cli import add_arguments as add_bench_arguments
    from loadgen.cli import one_line_errors
    from loadgen.compare_cli import add_arguments as add_compare_arguments
    add_bench_arguments(parser)
    sub = parser.add_subparsers(title="subcommand (optional)", dest="bench_command", metavar="compare",
                                 required=False)
    compare = sub.add_parser("compare", help="one report overlaying saved results (--save-result JSON files)",
                             description="one report overlaying saved results (--save-result JSON files)")
    one_line_errors(compare)
    add_compare_arguments(compare)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench_command", None) == "compare":
        from loadgen.compare_cli import run as run_compare_command
        return run_compare_command(args)
    from loadgen.cli import run as run_bench_command
    return run_bench_command(args)
