"""`tandem bench compare RESULT.json [RESULT.json ...] --out DIR [--label L ...]`: one report
overlaying saved results (loadgen/report/compare_report.py). Bad input is one line naming the
file or the flag, exit code 2."""

from __future__ import annotations

import argparse
import sys

from loadgen.report.compare_report import write_compare
from loadgen.report.result_file import load_result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULT.json",
                   help="files written by `tandem bench --save-result`; the first is the baseline of the ratios")
    p.add_argument("--out", required=True, metavar="DIR", help="where compare.html, compare.json and the PNGs go")
    p.add_argument("--label", nargs="+", action="extend", default=None, metavar="LABEL",
                   help="one name per result file, in order (default: backend @ server and the settings that "
                        "differ)")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (the HTML still draws every figure)")


def run(args: argparse.Namespace, out=sys.stdout) -> int:
    results = [load_result(path) for path in args.results]
    paths, differences = write_compare(results, args.out, args.label, plots=not args.no_plots)
    if differences:
        print("WARNING: the runs differ in workload: " + "; ".join(
            f"{key}: {' vs '.join(str(v) for v in values)}" for key, values in differences.items()), file=out)
    print("wrote " + ", ".join(paths), file=out)
    return 0
