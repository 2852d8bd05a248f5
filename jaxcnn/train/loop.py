"""The fit loop: epochs of sharded jitted steps, evaluation, JSONL metrics, checkpoints, resume.

``fit`` is deterministic given ``config.seed``: the init key, every step key
(``fold_in(rng, step)``) and every epoch's data order (``epoch_batches(seed=seed,
epoch=epoch)``) depend only on the seed, and the checkpoint stores the full state, so a run
stopped after epoch k and resumed ends with the same params as an uninterrupted run (bitwise
on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.train import checkpoint
from jaxcnn.train.ensemble import (
    create_ensemble_state,
    make_ensemble_eval_step,
    make_ensemble_train_step,
)
from jaxcnn.train.mesh import (
    check_batch_size,
    jit_eval_step,
    jit_train_step,
    make_mesh,
    replicate,
    shard_batch,
)
from jaxcnn.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    learning_rate_at,
    make_optimizer,
    make_schedule,
)
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import Preprocess, make_eval_step, make_train_step


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a training run (stored in checkpoints; checked on resume).

    Attributes:
      epochs: number of epochs.
      batch_size: GLOBAL train batch size (divisible by the number of devices).
      optimizer: ``"sgd"`` (Nesterov, decoupled decay) or ``"adamw"``.
      lr: peak learning rate. schedule: ``"onecycle"``, ``"cosine"`` or ``"constant"``.
      warmup_epochs: warm-up length in epochs (None: the schedule's default).
      momentum, nesterov, weight_decay, clip_norm: see :func:`make_optimizer`.
      label_smoothing: cross-entropy label smoothing.
      seed: init, dropout, augmentation and shuffle seed (ensemble member k uses seed + k).
      dtype: compute dtype of the preprocessed input (``"float32"``/``"bfloat16"``); build the
        model with the same ``dtype`` option for bf16 compute.
      ensemble: K > 1 trains K members in one vmapped step.
      augment, crop_pad, flip, cutout_size: on-device augmentation (used when fit builds the
        Preprocess itself).
      eval_batch_size: eval batch (padded; divisible by the device count). Not checked on resume.
      log_every: steps between progress-bar updates (the only device syncs in an epoch). Not
        checked on resume.
      keep_checkpoints: how many ``latest`` checkpoints to keep. Not checked on resume.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    schedule: str = "onecycle"
    warmup_epochs: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    clip_norm: float | None = None
    label_smoothing: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    ensemble: int = 1
    augment: bool = True
    crop_pad: int = 4
    flip: bool = True
    cutout_size: int = 0
    eval_batch_size: int = 500
    log_every: int = 20
    keep_checkpoints: int = 2

    # Fields that may change between a run and its resumption.
    RESUMABLE_CHANGES = ("eval_batch_size", "log_every", "keep_checkpoints")

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FitConfig.{name} must be a positive int, got {v!r}")

        for name in ("epochs", "batch_size", "ensemble", "eval_batch_size", "log_every"):
            positive_int(name)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"FitConfig.optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"FitConfig.schedule {self.schedule!r} not in {SCHEDULES}")
        if not self.lr > 0:
            raise ValueError(f"FitConfig.lr must be positive, got {self.lr}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"FitConfig.seed must be an int >= 0, got {self.seed!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"FitConfig.dtype must be float32, bfloat16 or float16: {self.dtype!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FitResult:
    """``state``: the final TrainState (ensemble: leading model axis); ``history``: one record
    per epoch (see :func:`fit`); ``best_eval_accuracy`` over the epochs."""

    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    best_eval_accuracy: float | None = None


def model_signature(model: nn.Module) -> str:
    """A string naming the module class and its configuration (compared on resume)."""
    fields = []
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name"):
            continue
        value = getattr(model, f.name)
        if hasattr(value, "dtype") or isinstance(value, type):
            value = jnp.dtype(value).name
        fields.append(f"{f.name}={value!r}")
    return f"{type(model).__name__}({', '.join(fields)})"


def _default_preprocess(config: FitConfig, train_ds) -> Preprocess:
    from jaxcnn.data import channel_stats

    mean, std = channel_stats(train_ds.images)
    std = np.maximum(std, 1e-3)
    return Preprocess(
        mean=tuple(mean),
        std=tuple(std),
        augment=config.augment,
        crop_pad=config.crop_pad,
        flip=config.flip,
        cutout_size=config.cutout_size,
        dtype=config.dtype,
    )


def _run_config(config, model, preprocess, train_ds, eval_ds) -> dict[str, Any]:
    return {
        **config.to_dict(),
        "model": model_signature(model),
        "preprocess": preprocess.to_dict(),
        "num_classes": int(train_ds.num_classes),
        "image_shape": list(train_ds.image_shape),
        "train_size": len(train_ds),
    }


def _check_resume_config(saved: dict, current: dict, workdir) -> None:
    skip = set(FitConfig.RESUMABLE_CHANGES)
    keys = sorted((set(saved) | set(current)) - skip)
    diffs = [k for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        lines = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
        raise ValueError(
            f"cannot resume from {workdir}: its checkpoint was made with a different "
            f"configuration ({lines}). Use the same settings, a new workdir, or resume=False."
        )


@functools.lru_cache(maxsize=16)
def _compiled_steps(preprocess, label_smoothing, num_classes, mesh, ensemble: bool):
    """Jitted steps, memoised on their static configuration so that repeated ``fit`` calls in
    one process (resume, several models with the same settings) reuse the compiled programs."""
    if ensemble:
        train = make_ensemble_train_step(
            preprocess, label_smoothing=label_smoothing, num_classes=num_classes
        )
        evals = make_ensemble_eval_step(preprocess, num_classes=num_classes)
    else:
        train = make_train_step(
            preprocess, label_smoothing=label_smoothing, num_classes=num_classes
        )
        evals = make_eval_step(preprocess, num_classes=num_classes)
    return jit_train_step(train, mesh), jit_eval_step(evals, mesh)


def _evaluate(eval_step, state, dataset, batch_size, mesh, *, keep_logits, progress=False):
    from jaxcnn.data import epoch_batches, num_batches, pad_batch

    local = batch_size // jax.process_count()
    sums: dict[str, Any] = {}
    logits = []
    batches = epoch_batches(dataset, batch_size, shuffle=False, drop_remainder=False)
    total = num_batches(len(dataset), batch_size, drop_remainder=False)
    bar = _tqdm(total=total, desc="eval", leave=False, disable=not progress)
    for images, labels in batches:
        images, labels, mask = pad_batch(images, labels, local)
        out = eval_step(state, *shard_batch(mesh, images, labels, mask))
        for k, v in out.items():
            if k != "logits":
                sums[k] = v if k not in sums else sums[k] + v
        if keep_logits:
            lg = np.asarray(jax.device_get(out["logits"]))
            real = int(mask.sum())
            logits.append(lg[..., :real, :])
        bar.update(1)
    bar.close()
    sums = {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}
    count = float(sums["count"])
    result: dict[str, Any] = {
        "loss": sums["loss_sum"] / count,
        "accuracy": sums["correct"] / count,
    }
    if "ensemble_correct" in sums:
        result["ensemble_loss"] = float(sums["ensemble_loss_sum"] / count)
        result["ensemble_accuracy"] = float(sums["ensemble_correct"] / count)
    if keep_logits:
        result["logits"] = np.concatenate(logits, axis=-2)
    return result


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def evaluate_dataset(
    state: TrainState,
    dataset,
    preprocess: Preprocess,
    batch_size: int = 500,
    *,
    mesh=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a (single-model or ensemble) state on a whole dataset.

    Args:
      state: a TrainState; an ensemble state (``state.step.ndim == 1``) is evaluated per member.
      dataset: an ``ArrayDataset`` (uint8 images (N, H, W, C), int labels (N,)).
      preprocess: its normalisation is applied (no augmentation).
      batch_size: eval batch; the last batch is padded and masked (one compiled shape).

    Returns:
      ``{"loss", "accuracy", "logits"}``: mean cross-entropy and accuracy (floats, or (K,)
      arrays for an ensemble, which also gets ``ensemble_loss``/``ensemble_accuracy`` of the
      averaged probabilities), and float32 logits (N, C) (ensemble: (K, N, C)).
    """
    mesh = make_mesh() if mesh is None else mesh
    check_batch_size(batch_size, mesh, what="eval batch_size")
    ensemble = np.ndim(state.step) == 1
    num_classes = getattr(dataset, "num_classes", None)
    eval_step = _compiled_steps(preprocess, 0.0, num_classes, mesh, ensemble)[1]
    result = _evaluate(
        eval_step,
        replicate(state, mesh),
        dataset,
        batch_size,
        mesh,
        keep_logits=True,
        progress=progress,
    )
    if not ensemble:
        result["loss"], result["accuracy"] = float(result["loss"]), float(result["accuracy"])
    return result


def _as_float(x):
    x = np.asarray(x, np.float64)
    return float(x) if x.ndim == 0 else [float(v) for v in x]


def _mean(x) -> float:
    return float(np.mean(np.asarray(x, np.float64)))


def fit(
    model: nn.Module,
    train_ds,
    eval_ds,
    *,
    config: FitConfig,
    workdir: str | os.PathLike,
    preprocess: Preprocess | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Train ``model`` on ``train_ds``, evaluating on ``eval_ds`` after every epoch.

    Args:
      model: a ``jaxcnn.models`` module (its ``num_classes`` must match the data).
      train_ds, eval_ds: ``ArrayDataset``s (uint8 images (N, H, W, C), int32 labels (N,)).
        ``eval_ds`` may be None (no evaluation; "best" then follows the train accuracy).
      config: the :class:`FitConfig`.
      workdir: run directory: ``checkpoints/{latest,best}`` and ``metrics.jsonl``.
      preprocess: on-device preprocessing; default: per-channel mean/std of ``train_ds`` and the
        augmentation flags of ``config``.
      resume: continue from ``checkpoints/latest`` when it exists (the saved configuration must
        match, except eval_batch_size, log_every and keep_checkpoints).
      progress: show tqdm bars (loss, accuracy, images/s; refreshed every ``log_every`` steps,
        the only points where the loop waits for the device).
      stop_after_epoch: end this call after that many finished epochs (e.g. to split a long run
        into time slices); the next call with ``resume=True`` continues.

    Returns:
      :class:`FitResult` with the final state and the history: one record per epoch
      ``{epoch, train_loss, train_accuracy, eval_loss, eval_accuracy, lr, images_per_s,
      epoch_seconds}`` (ensembles: means over members, plus ``*_members`` lists and
      ``ensemble_eval_accuracy``). The same records are in ``<workdir>/metrics.jsonl``.

    Raises:
      TrainingDiverged: the loss became NaN/inf; the checkpoint of the last good epoch is kept.
      ValueError: bad configuration or a checkpoint from a different configuration.
    """
    from jaxcnn.data import epoch_batches, num_batches

    if not isinstance(config, FitConfig):
        raise ValueError(f"config must be a FitConfig, got {type(config).__name__}")
    for name, ds in (("train_ds", train_ds), ("eval_ds", eval_ds)):
        if ds is not None and not (hasattr(ds, "images") and hasattr(ds, "labels")):
            raise ValueError(f"{name} must be an ArrayDataset, got {type(ds).__name__}")
    num_classes = int(train_ds.num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(
            f"model has num_classes={model.num_classes} but the data has {num_classes} classes; "
            f"create the model with num_classes={num_classes}"
        )
    steps_per_epoch = num_batches(len(train_ds), config.batch_size, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training set ({len(train_ds)} "
            "examples); use a smaller batch_size"
        )
    mesh = make_mesh()
    check_batch_size(config.batch_size, mesh)
    check_batch_size(config.eval_batch_size, mesh, what="eval_batch_size")
    if preprocess is None:
        preprocess = _default_preprocess(config, train_ds)
    elif not isinstance(preprocess, Preprocess):
        raise ValueError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_config = _run_config(config, model, preprocess, train_ds, eval_ds)

    total_steps = config.epochs * steps_per_epoch
    warmup = (
        None
        if config.warmup_epochs is None
        else min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps - 1)
    )
    schedule = make_schedule(
        config.schedule, config.lr, total_steps=total_steps, warmup_steps=warmup
    )
    tx = make_optimizer(
        config.optimizer,
        config.lr,
        schedule=config.schedule,
        total_steps=total_steps,
        warmup_steps=warmup,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
    )
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best = None
    restored = checkpoint.restore(workdir, "latest") if resume else None
    if restored is not None:  # check before any compilation
        _check_resume_config(restored[1].get("config", {}), run_config, workdir)

    input_shape = (1, *train_ds.image_shape)
    ensemble = config.ensemble > 1
    if ensemble:
        seeds = [config.seed + k for k in range(config.ensemble)]
        state = create_ensemble_state(model, tx, seeds, input_shape)
    else:
        state = create_train_state(model, tx, jax.random.key(config.seed), input_shape)
    if restored is not None:
        state = checkpoint.tree_to_state(state, restored[0])
        meta = restored[1]
        start_epoch = int(meta["epoch"])
        history = list(meta.get("history", []))
        best = meta.get("best_metric")
    # metrics.jsonl mirrors the checkpointed history (drops records of unsaved epochs).
    metrics_path = workdir / "metrics.jsonl"
    with open(metrics_path, "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")

    state = replicate(state, mesh)
    train_step, eval_step = _compiled_steps(
        preprocess, config.label_smoothing, num_classes, mesh, ensemble
    )
    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    for epoch in range(start_epoch, last_epoch):
        t0 = time.perf_counter()
        bar = _tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            unit="step",
        )
        metrics_dev = []
        window_start, seen, t_window = 0, 0, t0
        batches = epoch_batches(train_ds, config.batch_size, seed=config.seed, epoch=epoch)
        for i, (images, labels) in enumerate(batches):
            state, m = train_step(state, *shard_batch(mesh, images, labels))
            metrics_dev.append(m)
            if (i + 1) % config.log_every == 0 or i + 1 == steps_per_epoch:
                # The only sync point: fetch the window's metrics (small scalars).
                window = jax.device_get(metrics_dev[window_start:])
                losses = np.array([w["loss"] for w in window], np.float64)
                if not np.all(np.isfinite(losses)):
                    bar.close()
                    _diverged(workdir, epoch, int(i), losses)
                now = time.perf_counter()
                done = i + 1 - seen
                rate = done * config.batch_size / max(now - t_window, 1e-9)
                bar.set_postfix(
                    loss=f"{losses.mean():.4f}",
                    acc=f"{np.mean([w['accuracy'] for w in window]):.4f}",
                    img_s=f"{rate:.0f}",
                )
                bar.update(done)
                window_start, seen, t_window = len(metrics_dev), i + 1, now
        bar.close()
        train_seconds = time.perf_counter() - t0
        all_m = jax.device_get(metrics_dev)
        train_loss = np.mean([m["loss"] for m in all_m], axis=0)
        train_acc = np.mean([m["accuracy"] for m in all_m], axis=0)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": _mean(train_loss),
            "train_accuracy": _mean(train_acc),
        }
        if eval_ds is not None:
            ev = _evaluate(
                eval_step, state, eval_ds, config.eval_batch_size, mesh, keep_logits=False
            )
            record["eval_loss"] = _mean(ev["loss"])
            record["eval_accuracy"] = _mean(ev["accuracy"])
        else:
            record["eval_loss"] = record["eval_accuracy"] = None
        record["lr"] = learning_rate_at(schedule, (epoch + 1) * steps_per_epoch - 1)
        record["images_per_s"] = steps_per_epoch * config.batch_size / train_seconds
        record["epoch_seconds"] = time.perf_counter() - t0
        if ensemble:
            record["train_loss_members"] = _as_float(train_loss)
            record["train_accuracy_members"] = _as_float(train_acc)
            if eval_ds is not None:
                record["eval_accuracy_members"] = _as_float(ev["accuracy"])
                record["ensemble_eval_accuracy"] = ev["ensemble_accuracy"]
        history.append(record)
        metric = record["eval_accuracy"] if eval_ds is not None else record["train_accuracy"]
        is_best = best is None or metric > best
        if is_best:
            best = metric
        checkpoint.save(
            workdir,
            state,
            epoch=epoch + 1,
            meta={"best_metric": best, "history": history, "config": run_config},
            best=is_best,
            keep=config.keep_checkpoints,
        )
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            msg = (
                f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc "
                f"{record['train_accuracy']:.4f}"
            )
            if eval_ds is not None:
                msg += f", eval loss {record['eval_loss']:.4f} acc {record['eval_accuracy']:.4f}"
            _tqdm_write(msg + f", {record['images_per_s']:.0f} img/s")
    return FitResult(state=state, history=history, best_eval_accuracy=best)


def _tqdm_write(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


def _diverged(workdir, epoch, step_in_epoch, losses):
    bad = losses[~np.isfinite(losses)][0]
    last = checkpoint.latest_epoch(workdir)
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
    "FitConfig",
    "FitResult",
    "TrainingDiverged",
    "evaluate_dataset",
    "fit",
    "model_signature",
]
