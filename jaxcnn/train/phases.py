"""The phases of a training run, shared by :func:`jaxcnn.train.fit` and the head and
fine-tuning runs of :mod:`jaxcnn.transfer`: restore or start, run an epoch, evaluate, record,
save.

A :class:`Run` says what the phases need to know (workdir, the configuration the checkpoints
record, epochs, steps per epoch, batch size, schedule, logging); :func:`train_epochs` drives
them::

    for epoch in range(start.epoch, last_epoch):
        state, metrics, seconds = run_epoch(run, feed, state, epoch)  # a feed's dispatches
        evaluation = evaluate(state) if run.evaluates_after(epoch) else None
        record = epoch_record(run, epoch, metrics, evaluation, seconds, t0)
        record_epoch(run, record, history)             # history, metrics.jsonl, a log line
        best = save_epoch(run, state, history, best)   # checkpoints/{latest,best}

so every run gets the same history records, ``checkpoints/{latest,best}``, ``metrics.jsonl``,
resume, progress bars and NaN check. The training itself is the caller's: a feed
(:mod:`jaxcnn.train.feeds`: ``feed.epoch(state, epoch)`` yields ``(state, metrics, steps)``)
and an evaluate function (``state -> {"loss", "accuracy", ...}``, or None without an
evaluation set).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.distributed import is_primary
from jaxcnn.host_malloc import release_free_memory
from jaxcnn.paths import file_in_the_way
from jaxcnn.train import checkpoint
from jaxcnn.train.compile_clock import compile_clock
from jaxcnn.train.feeds import stack_metrics
from jaxcnn.train.optim import learning_rate_at
from jaxcnn.train.runconfig import check_resume_config


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Run:
    """What the phases need to know about one training run.

    Attributes:
      workdir: ``checkpoints/{latest,best}`` and ``metrics.jsonl`` go here; None keeps nothing.
      run_config: what the checkpoints record about the run (JSON values), compared on resume.
      epochs, steps_per_epoch, batch_size: the run's length and batch (``images_per_s``).
      schedule: ``step -> learning rate`` (each record's ``lr``: that of the epoch's last step).
      log_every: steps between progress-bar updates (the only device syncs in an epoch).
      keep_checkpoints: how many ``latest`` checkpoints to keep.
      progress: tqdm bars; verbose: one line per epoch (and on resume), process 0 only.
      desc: the bars' label (``"<desc> 3/30"``).
      eval_every: evaluate after every this many epochs and after the last; 0: never.
    """

    workdir: Path | None
    run_config: dict[str, Any]
    epochs: int
    steps_per_epoch: int
    batch_size: int
    schedule: Callable
    log_every: int = 20
    keep_checkpoints: int = 2
    progress: bool = False
    verbose: bool = True
    desc: str = "epoch"
    eval_every: int = 1

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the evaluate phase runs after (0-based) ``epoch``."""
        done = epoch + 1
        return self.eval_every > 0 and (done % self.eval_every == 0 or done == self.epochs)

    def log(self, msg: str) -> None:
        """Print ``msg`` (above an open bar when there are bars) when verbose, on process 0."""
        if not self.verbose or not is_primary():
            return
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)  # keeps an open bar intact
        else:
            print(msg, flush=True)


@dataclass
class Start:
    """Where a run starts: a fresh state at epoch 0, or a checkpoint (``arrays``) after
    ``epoch`` finished epochs with its ``history`` and ``best`` metric."""

    arrays: dict | None = None
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None

    @classmethod
    def of(cls, restored: tuple[dict, dict] | None) -> Start:
        """The start for ``checkpoint.restore``'s ``(arrays, meta)`` (None: a fresh one)."""
        if restored is None:
            return cls()
        arrays, meta = restored
        return cls(arrays, int(meta["epoch"]), list(meta.get("history", [])),
                   meta.get("best_metric"))


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (progress bars default to on there, off in logs)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def make_workdir(workdir) -> Path:
    """``workdir`` as a Path, created if missing; a ValueError, before any work, when it (or a
    folder above it) is an existing file."""
    path = Path(workdir)
    existing = file_in_the_way(path)
    if existing is not None:
        what = "is a file" if existing == path else f"is inside {existing}, a file"
        raise ValueError(
            f"workdir {path} {what}, not a folder; pass a folder path (it is created if "
            "missing), or move that file away"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def restore_or_start(run: Run, resume: bool, *, may_change=()) -> Start:
    """Phase "restore or start": the newest readable checkpoint of ``run.workdir`` when
    ``resume`` (its saved configuration must be ``run.run_config``, except the keys in
    ``may_change``: a ValueError naming the differences otherwise), else a fresh start."""
    if not resume or run.workdir is None:
        return Start()
    restored = checkpoint.restore(run.workdir, "latest")
    if restored is not None:
        check_resume_config(restored[1].get("config", {}), run.run_config, run.workdir,
                            may_change=may_change)
    return Start.of(restored)


def run_epoch(run: Run, feed, state, epoch: int):
    """Phase "run an epoch": every dispatch of ``feed.epoch(state, epoch)``, with a bar
    refreshed every ``run.log_every`` steps (the only points where it waits for the device).

    Returns ``(state, metrics, seconds)``: the new state, the epoch's metrics as host arrays
    with a leading steps axis (ensemble: (steps, K)) and its training time.

    Raises:
      TrainingDiverged: a loss became NaN/inf (the last checkpoint is kept).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    total = run.steps_per_epoch
    bar = tqdm(total=total, desc=f"{run.desc} {epoch + 1}/{run.epochs}", unit="step",
               leave=False,  # the epoch's line stays, not its bar
               disable=not run.progress or not is_primary())
    metrics: list = []
    window_start, done, seen, t_window = 0, 0, 0, t0
    for new_state, m, k in feed.epoch(state, epoch):
        state = new_state  # the old state's buffers were donated to the step
        metrics.append(m)
        done += k
        if done // run.log_every > (done - k) // run.log_every or done == total:
            window = stack_metrics(metrics[window_start:], feed.on_device)
            losses = np.asarray(window["loss"], np.float64)
            if not np.all(np.isfinite(losses)):
                bar.close()
                _diverged(run.workdir, epoch, done - 1, losses)
            now = time.perf_counter()
            rate = (done - seen) * run.batch_size / max(now - t_window, 1e-9)
            bar.set_postfix(loss=f"{losses.mean():.4f}",
                            acc=f"{np.mean(window['accuracy']):.4f}", img_s=f"{rate:.0f}")
            bar.update(done - seen)
            window_start, seen, t_window = len(metrics), done, now
    bar.close()
    return state, stack_metrics(metrics, feed.on_device), time.perf_counter() - t0


def epoch_record(run: Run, epoch: int, metrics, evaluation, train_seconds: float,
                 started: float) -> dict[str, Any]:
    """The history record of an epoch, ``{epoch, train_loss, train_accuracy,
    eval_loss, eval_accuracy, lr, images_per_s, epoch_seconds}`` (``eval_*`` None without an
    ``evaluation``; :func:`train_epochs` adds ``compile_seconds``, the part of the epoch JAX
    spent tracing and compiling); an ensemble's (metrics (steps, K)) are means over the
    members, plus ``*_members`` lists and ``ensemble_eval_accuracy``."""
    train_loss = np.mean(metrics["loss"], axis=0)
    train_acc = np.mean(metrics["accuracy"], axis=0)
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": _mean(train_loss),
        "train_accuracy": _mean(train_acc),
        "eval_loss": None if evaluation is None else _mean(evaluation["loss"]),
        "eval_accuracy": None if evaluation is None else _mean(evaluation["accuracy"]),
        "lr": learning_rate_at(run.schedule, (epoch + 1) * run.steps_per_epoch - 1),
        "images_per_s": run.steps_per_epoch * run.batch_size / train_seconds,
        "epoch_seconds": time.perf_counter() - started,
    }
    if np.ndim(train_loss):  # an ensemble: per-member numbers too
        record["train_loss_members"] = _as_float(train_loss)
        record["train_accuracy_members"] = _as_float(train_acc)
        if evaluation is not None:
            record["eval_accuracy_members"] = _as_float(evaluation["accuracy"])
            record["ensemble_eval_accuracy"] = evaluation["ensemble_accuracy"]
    return record


def record_epoch(run: Run, record: dict, history: list) -> None:
    """Phase "record": append ``record`` to ``history`` and to ``metrics.jsonl``, print its
    line."""
    history.append(record)
    if run.workdir is not None and is_primary():
        with open(run.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    run.log(_epoch_line(record, run.epochs))


def save_epoch(run: Run, state, history: list, best: float | None):
    """Phase "save": checkpoint ``state`` after the last epoch of ``history`` as ``latest``,
    and as ``best`` when its metric (the eval accuracy, else the train accuracy) is the best so
    far. Returns the best metric."""
    record = history[-1]
    metric = record["eval_accuracy"]
    metric = record["train_accuracy"] if metric is None else metric
    is_best = best is None or metric > best
    best = metric if is_best else best
    if run.workdir is not None:
        checkpoint.save(run.workdir, state, epoch=record["epoch"], best=is_best,
                        meta={"best_metric": best, "history": history,
                              "config": run.run_config},
                        keep=run.keep_checkpoints)
    return best


def train_epochs(run: Run, state, start: Start, make_feed: Callable[[], Any],
                 evaluate: Callable[[Any], dict | None], *, last_epoch: int | None = None):
    """Run the epochs from ``start.epoch`` to ``last_epoch`` (default ``run.epochs``):
    run an epoch on the feed ``make_feed()`` (made only when there is an epoch to run),
    ``evaluate(state)``, record, save. Returns ``(state, history, best metric)``."""
    history, best = list(start.history), start.best
    if start.arrays is not None:
        run.log(f"resumed from epoch {start.epoch} ({run.workdir})")
    if run.workdir is not None and is_primary():  # metrics.jsonl mirrors the checkpoints
        with open(run.workdir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in history)
    last_epoch = run.epochs if last_epoch is None else min(run.epochs, last_epoch)
    feed = None
    for epoch in range(start.epoch, last_epoch):
        t0 = time.perf_counter()
        with compile_clock() as compiling:
            feed = make_feed() if feed is None else feed  # may compile the step
            state, metrics, seconds = run_epoch(run, feed, state, epoch)
            evaluation = evaluate(state) if run.evaluates_after(epoch) else None
        record = epoch_record(run, epoch, metrics, evaluation, seconds, t0)
        record["compile_seconds"] = compiling.seconds
        record_epoch(run, record, history)
        best = save_epoch(run, state, history, best)
        release_free_memory()  # the epoch's freed host memory back to the kernel
    return state, history, best


def _mean(x) -> float:
    return float(np.mean(np.asarray(x, np.float64)))


def _as_float(x):
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else [float(v) for v in x]


def _epoch_line(record: dict, epochs: int) -> str:
    msg = (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} acc "
        f"{record['train_accuracy']:.4f}"
    )
    if record["eval_loss"] is not None:
        msg += f", eval loss {record['eval_loss']:.4f} acc {record['eval_accuracy']:.4f}"
    return msg + f", {record['images_per_s']:.0f} img/s, {record['epoch_seconds']:.1f} s"


def _diverged(workdir, epoch, step_in_epoch, losses):
    bad = losses[~np.isfinite(losses)][0]
    last = None if workdir is None else checkpoint.latest_epoch(workdir)
    kept = (
        f"the checkpoint of epoch {last} is kept in {checkpoint.checkpoint_dir(workdir)}"
        if last is not None
        else "no checkpoint was written yet"
    )
    raise TrainingDiverged(
        f"training diverged: loss became {bad} in epoch {epoch + 1} (by step {step_in_epoch + 1} "
        f"of the epoch); {kept}. Lower the learning rate, add clip_norm, or check the data."
    ) from None


__all__ = [
    "Run",
    "Start",
    "TrainingDiverged",
    "epoch_record",
    "make_workdir",
    "record_epoch",
    "restore_or_start",
    "run_epoch",
    "save_epoch",
    "train_epochs",
]
