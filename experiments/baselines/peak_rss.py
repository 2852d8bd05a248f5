"""What the baseline scripts share (standard library only): ``peak_rss_mb()``, this process's
peak resident set size in MiB, and ``add_common_options``, their common command-line options.

Shared by the baseline scripts (run in their own environment, they import it from this folder)
and ``experiments.bench`` (which loads this file by path), so that every process in the speed
table reports its memory the same way.
"""

from __future__ import annotations

import argparse
import resource
import sys


def peak_rss_mb() -> float:
    """``VmHWM`` of ``/proc/self/status`` on Linux, else ``ru_maxrss`` (KiB on Linux, bytes on
    macOS). Not ``ru_maxrss`` first: Linux keeps it across ``execve``, so a process started by a
    bigger one (a baseline started by the bench) would report at least its parent's RSS."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def add_common_options(p: argparse.ArgumentParser, models: tuple[str, ...]) -> None:
    """The options both baselines take: --model, --batch-size, --steps, --repeats."""
    p.add_argument("--model", choices=models, default="cnn3")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20,
                   help="train (and eval) steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
