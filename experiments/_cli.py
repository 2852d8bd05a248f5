"""Argument helpers shared by the experiments (``python -m experiments.<name>``).

Every experiment takes the same four locations/knobs, spelled the same way:
``--workdir`` (logs and results), ``--seed``, ``--visuals-dir`` (figures) and ``--data-dir``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_parser(experiment: str, description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for ``experiment`` that shows defaults in ``--help``."""
    return argparse.ArgumentParser(
        prog=f"python -m experiments.{experiment}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_common(
    parser: argparse.ArgumentParser,
    experiment: str,
    *,
    workdir: bool = True,
    seed: bool = True,
    visuals: bool = True,
    data_dir: bool = False,
    default_seed: int = 0,
) -> argparse.ArgumentParser:
    """Add the shared flags to ``parser``; each can be left out with its keyword."""
    if workdir:
        parser.add_argument(
            "--workdir",
            type=Path,
            default=Path("runs") / experiment,
            help="folder for results (JSON, logs, checkpoints); created if missing",
        )
    if seed:
        parser.add_argument(
            "--seed",
            type=int,
            default=default_seed,
            help="random seed for parameter init, data split and shuffling",
        )
    if visuals:
        parser.add_argument(
            "--visuals-dir",
            type=Path,
            default=Path("visuals") / experiment,
            help="folder the PNG figures are written to; created if missing",
        )
    if data_dir:
        parser.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="folder holding the dataset (a TFDS data_dir or an image folder)",
        )
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value
