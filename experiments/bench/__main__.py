"""``python -m experiments.bench <name> [flags]``: run one benchmark (``--help`` lists them)."""

from __future__ import annotations

import argparse
import sys

from experiments import _cli
from experiments.bench import host, layers, memory, ops, train

BENCHMARKS = (ops, train, layers, host, memory)  # each adds its subcommand: add_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = _cli.ArgumentParser(
        prog="python -m experiments.bench",
        description="Speed tables for jaxcnn. Pick a benchmark; each has its own --help.",
        formatter_class=_cli.HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="BENCHMARK")
    for benchmark in BENCHMARKS:
        benchmark.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for a benchmark that re-runs itself (train --xla-flags)
    return args.func(args)


if __name__ == "__main__":
    _cli.run(main)
