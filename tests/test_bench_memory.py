"""``python -m experiments.bench memory``: its parser, its table and verdict, and the reading
of a process's resident memory (the training job itself runs in the benchmark, not here)."""

import os
import sys

import pytest

from experiments.bench import memory
from experiments.bench.__main__ import build_parser


def test_parser_defaults():
    args = build_parser().parse_args(["memory"])
    assert args.func is memory.command
    assert (args.epochs, args.train_split, args.eval_split) == (6, "train[:10000]",
                                                                 "train[45000:46000]")


def test_table_gives_growth_against_epoch_two_and_the_verdict():
    flat = memory.format_memory({"epochs": [1000.0, 1200.0, 1210.0, 1201.0], "peak_mb": 1300})
    assert "+0.8%" in flat and "largest growth after epoch 2: +0.8% (bar < 5%: met)" in flat
    assert "peak RSS of the whole job" in flat and "1300 MiB" in flat
    leak = memory.format_memory({"epochs": [1000.0, 1000.0, 1100.0, 1200.0], "peak_mb": 1250})
    assert "largest growth after epoch 2: +20.0% (bar < 5%: NOT met)" in leak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_reads_resident_memory_of_a_process():
    rss = memory._status_mb(os.getpid(), "VmRSS")
    assert rss is not None and 10 < rss < 100_000
    assert memory._status_mb(2**22 + 12345, "VmRSS") is None  # no such process
