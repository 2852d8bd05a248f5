"""Resident memory over a training run: ``python -m experiments.bench memory``.

Runs the main job as a user does (``python -m experiments.cifar10 --models cnn3`` with
``--epochs``, checkpoints, ``metrics.jsonl``, the bundle and the figures) in a child process,
and reads the child's resident set size (``VmRSS`` of ``/proc/<pid>/status``) every time an
epoch's line lands in ``metrics.jsonl``, i.e. after its evaluation and checkpoint; at the end
its peak (``VmHWM``), which includes the final evaluation, bundle and figures. A leak from
metrics, checkpoints or figures shows as growth from epoch to epoch; the bar: after epoch 2
the RSS grows by less than 5%. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import _cli

GROWTH_BAR = 0.05  # after epoch 2, RSS grows by less than 5%


def _status_mb(pid: int, field: str) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return None


def _count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def measure(args: argparse.Namespace) -> dict:
    """Run the job and sample its RSS after each epoch; returns the measurements."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run.", dir=workdir))
    argv = [sys.executable, "-m", "experiments.cifar10", "--models", "cnn3",
            "--epochs", str(args.epochs), "--train-split", args.train_split,
            "--eval-split", args.eval_split, "--workdir", str(run_dir), "--no-progress"]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    log = (run_dir / "job.log").open("w")
    child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics, seen, per_epoch = run_dir / "cnn3" / "metrics.jsonl", 0, []
    peak = 0.0
    while child.poll() is None:
        rss = _status_mb(child.pid, "VmRSS")
        peak = max(peak, _status_mb(child.pid, "VmHWM") or 0.0)
        lines = _count_lines(metrics)
        if lines > seen and rss is not None:
            per_epoch += [rss] * (lines - seen)
            seen = lines
        time.sleep(0.05)
    log.close()
    if child.returncode != 0:
        tail = (run_dir / "job.log").read_text()[-2000:]
        raise ValueError(f"the training job failed (exit {child.returncode}); its log ends:\n"
                         f"{tail}")
    return {"epochs": per_epoch, "peak_mb": peak, "command": " ".join(argv[1:]),
            "workdir": str(run_dir)}


def format_memory(r: dict) -> str:
    rows = [f"{'epoch':>5}  {'RSS MiB':>8}  {'vs epoch 2':>10}"]
    base = r["epochs"][1] if len(r["epochs"]) > 1 else None
    for i, mb in enumerate(r["epochs"], 1):
        growth = "" if base is None or i < 2 else f"{100 * (mb / base - 1):+.1f}%"
        rows.append(f"{i:>5}  {mb:>8.0f}  {growth:>10}")
    rows.append(f"peak RSS of the whole job (final evaluation, bundle, figures included): "
                f"{r['peak_mb']:.0f} MiB")
    if base is not None and len(r["epochs"]) > 2:
        growth = max(r["epochs"][2:]) / base - 1
        verdict = "met" if growth < GROWTH_BAR else "NOT met"
        rows.append(f"largest growth after epoch 2: {100 * growth:+.1f}% "
                    f"(bar < {100 * GROWTH_BAR:.0f}%: {verdict})")
    return "\n".join(rows)


def command(args) -> int:
    if not sys.platform.startswith("linux"):
        raise ValueError("bench memory reads /proc/<pid>/status: Linux only")
    r = measure(args)
    print(f"python {r['command']}")
    print(format_memory(r))
    _cli.write_json(Path(args.workdir) / "bench_memory.json", r)
    return 0


def add_parser(sub) -> None:
    """Add the ``memory`` subcommand to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "memory",
        help="resident memory of the main job (cnn3) after each epoch: no leak from metrics, "
        "checkpoints or figures",
        description=__doc__.split("\n\n", 1)[1].replace("``", "'"),
        formatter_class=_cli.HelpFormatter,
    )
    _cli.add_common(p, "bench_memory", visuals=False, seed=False, data_dir=True)
    p.add_argument("--epochs", type=_cli.positive_int, default=6, help="epochs of cnn3")
    p.add_argument("--train-split", type=_cli.tfds_split, default="train[:10000]",
                   help="TFDS split to train on")
    p.add_argument("--eval-split", type=_cli.tfds_split, default="train[45000:46000]",
                   help="TFDS split evaluated after every epoch")
    p.set_defaults(func=command)


__all__ = ["add_parser", "command", "format_memory", "measure"]
