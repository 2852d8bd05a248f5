"""The fit loop: epochs of sharded jitted steps, evaluation, JSONL metrics, checkpoints, resume.

``fit`` trains what :func:`~jaxcnn.train.build` builds from the model, the
:class:`~jaxcnn.train.FitConfig` and the training set (the state and the jitted steps), so
everything that shapes a run is in the config: a lesson configures the engine, never copies it.

``fit`` is deterministic given ``config.seed``: the init key (and the key of the config's
``init_fn``), every step key (``fold_in(rng, step)``) and every epoch's data order
(``epoch_batches(seed=seed, epoch=epoch)``) depend only on the seed, and the checkpoint stores
the full state (optimizer state and its EMA of the weights included), so a run stopped after
epoch k and resumed ends with the same params as an uninterrupted run (bitwise on CPU).

Where the batches come from (``FitConfig.data_on_device``): on the *host path* each step's batch
is gathered in numpy (:func:`~jaxcnn.data.epoch_batches`) and copied to the devices
(:func:`~jaxcnn.train.mesh.shard_batch`); on the *device path* the uint8 training set is put on
every device once and each step gathers its batch there from row indices
(:func:`~jaxcnn.data.batching.epoch_indices`: the same seeded permutation, hence the same
batches in the same order and the same numbers), optionally ``steps_per_dispatch`` steps per
call with ``lax.scan``. With ``FitConfig.flip="alternate"`` both paths mirror the same rows
(:func:`~jaxcnn.data.alternating_flip_mask`: numpy on the host, after the gather on the
device). The device path is single-process: with several processes ``fit`` uses
the host path, whose per-process slices are the multi-host contract.

Any device count: the train batch must split evenly over the devices (a clear ValueError naming
valid sizes, before any compilation); evaluation batches adapt (rounded up to a multiple of the
device count, padded and masked).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.host_malloc import reuse_freed_memory
from jaxcnn.train import checkpoint
from jaxcnn.train.builder import (
    Engine,
    build,
    check_inputs,
    jitted_eval_step,
    make_preprocess,
    resolve_normalization,
)
from jaxcnn.train.config import FitConfig
from jaxcnn.train.ema import with_ema_params
from jaxcnn.train.mesh import (
    make_mesh,
    padded_batch_size,
    replicate,
    replicated,
    shard_batch,
)
from jaxcnn.train.optim import learning_rate_at
from jaxcnn.train.state import TrainState
from jaxcnn.train.steps import Preprocess

# data_on_device="auto" on an accelerator keeps the training set on the devices when one copy
# (every device holds a full copy) takes at most this share of a device's memory...
DEVICE_DATA_FRACTION = 0.25
# ... or, when the device does not report its memory, at most this many bytes.
DEVICE_DATA_FALLBACK_BYTES = 1 << 30


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class FitResult:
    """``state``: the final TrainState (ensemble: leading model axis; its EMA of the weights,
    if any, via :func:`~jaxcnn.train.ema_params`); ``history``: one record per epoch (see
    :func:`fit`); ``best_eval_accuracy`` over the epochs; ``data_on_device``: whether this call
    gathered its batches on the device (``FitConfig.data_on_device``); ``preprocess``: the
    normalisation and augmentation the steps applied (evaluate and export with its
    ``mean``/``std``)."""

    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    best_eval_accuracy: float | None = None
    data_on_device: bool = False
    preprocess: Preprocess | None = None


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


def _run_config(config, model, preprocess, train_ds) -> dict[str, Any]:
    """What a checkpoint records about its run (JSON values, as they read back)."""
    run = {
        **config.to_dict(),
        "model": model_signature(model),
        "normalization": {"mean": list(preprocess.mean), "std": list(preprocess.std)},
        "num_classes": int(train_ds.num_classes),
        "image_shape": list(train_ds.image_shape),
        "train_size": len(train_ds),
    }
    return json.loads(json.dumps(run))


def _check_resume_config(saved: dict, current: dict, workdir) -> None:
    skip = set(FitConfig.RESUMABLE_CHANGES)
    defaults = FitConfig().to_dict()
    saved = {**{k: defaults[k] for k in FitConfig.LATER_FIELDS if k not in saved}, **saved}
    keys = sorted((set(saved) | set(current)) - skip)
    diffs = [k for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        lines = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
        raise ValueError(
            f"cannot resume from {workdir}: its checkpoint was made with a different "
            f"configuration ({lines}). Use the same settings, a new workdir, or resume=False."
        )


# --------------------------------------------------------------------------------------------
# Where the training batches come from
# --------------------------------------------------------------------------------------------


def dataset_nbytes(dataset) -> int:
    """Bytes of a dataset's uint8 images plus its int32 labels (one copy)."""
    return int(np.asarray(dataset.images).nbytes + 4 * len(dataset.labels))


def resolve_data_on_device(setting, dataset, mesh=None) -> bool:
    """Whether ``fit`` keeps ``dataset`` on the devices, for a ``FitConfig.data_on_device``
    setting (``True``, ``False`` or ``"auto"``; see :class:`FitConfig`).

    Always False with several processes (the device path is single-process). ``"auto"``: False
    on CPU; on an accelerator True when one copy of the dataset is at most
    ``DEVICE_DATA_FRACTION`` of the smallest device memory of the mesh (or
    ``DEVICE_DATA_FALLBACK_BYTES`` when the device does not report it).
    """
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ValueError(f"data_on_device must be True, False or 'auto', got {setting!r}")
    if setting is False or jax.process_count() > 1:
        return False
    if setting is True:
        return True
    devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()
    if any(d.platform == "cpu" for d in devices):
        return False
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - a backend without memory stats
            stats = {}
        if stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    budget = DEVICE_DATA_FRACTION * min(limits) if limits else DEVICE_DATA_FALLBACK_BYTES
    return dataset_nbytes(dataset) <= budget


class HostFeed:
    """Host path: each step's batch gathered in numpy (``epoch_batches``, this process's slice)
    and copied to the devices (``shard_batch``), one jitted step per batch. ``alternate_flip``:
    the rows that :func:`~jaxcnn.data.alternating_flip_mask` picks are mirrored in numpy
    first."""

    on_device = False

    def __init__(
        self, train_step, dataset, batch_size: int, mesh, seed: int, alternate_flip: bool = False
    ):
        self.step, self.dataset, self.batch_size = train_step, dataset, batch_size
        self.mesh, self.seed, self.alternate_flip = mesh, seed, bool(alternate_flip)

    def epoch(self, state, epoch: int):
        """Yield ``(state, metrics, steps)`` per dispatch; metrics are per-step scalars."""
        from jaxcnn.data import epoch_batches

        batches = epoch_batches(self.dataset, self.batch_size, seed=self.seed, epoch=epoch,
                                alternate_flip=self.alternate_flip)
        for images, labels in batches:
            state, metrics = self.step(state, *shard_batch(self.mesh, images, labels))
            yield state, metrics, 1


class DeviceFeed:
    """Device path: the uint8 dataset replicated on every device once; each call sends only
    ``(K, B)`` int32 row indices (:func:`~jaxcnn.data.batching.epoch_indices`) and runs K steps
    that gather their batches on the device. ``alternate_flip``: each call also sends the
    ``(K, B)`` bool mask of :func:`~jaxcnn.data.alternating_flip_mask` (the indexed step must
    take it: ``jit_indexed_train_step(..., flips=True)``) and the step mirrors those rows after
    its gather. Single-process."""

    on_device = True

    def __init__(
        self,
        indexed_step,
        dataset,
        batch_size: int,
        mesh,
        seed: int,
        steps_per_dispatch: int = 1,
        alternate_flip: bool = False,
    ):
        if jax.process_count() > 1:
            raise ValueError(
                "the device data path is single-process; with several processes use the host "
                "path (data_on_device=False)"
            )
        if isinstance(steps_per_dispatch, bool) or not isinstance(steps_per_dispatch, int) or (
            steps_per_dispatch < 1
        ):
            raise ValueError(
                f"steps_per_dispatch must be a positive int, got {steps_per_dispatch!r}"
            )
        self.step, self.batch_size, self.seed = indexed_step, batch_size, seed
        self.steps_per_dispatch = steps_per_dispatch
        self.alternate_flip = bool(alternate_flip)
        self.size = len(dataset)
        rep = replicated(mesh)
        self.images = jax.device_put(np.asarray(dataset.images), rep)
        self.labels = jax.device_put(np.asarray(dataset.labels, np.int32), rep)

    def epoch(self, state, epoch: int):
        """Yield ``(state, metrics, steps)`` per dispatch; metrics have a leading steps axis."""
        from jaxcnn.data.batching import alternating_flip_mask, epoch_indices

        idx = epoch_indices(self.size, self.batch_size, seed=self.seed, epoch=epoch)
        flips = (
            alternating_flip_mask(idx, epoch, self.size, self.seed) if self.alternate_flip else None
        )
        k = self.steps_per_dispatch
        for start in range(0, len(idx), k):
            block = idx[start : start + k]
            if flips is None:
                state, metrics = self.step(state, self.images, self.labels, block)
            else:
                state, metrics = self.step(
                    state, self.images, self.labels, block, flips[start : start + k]
                )
            yield state, metrics, len(block)


def make_feed(
    engine: Engine,
    dataset,
    *,
    on_device: bool = False,
    steps_per_dispatch: int | None = None,
) -> HostFeed | DeviceFeed:
    """The training-batch source ``fit`` uses (also for benchmarks): ``feed.epoch(state, e)``
    yields ``(state, metrics, steps)`` for every dispatch of epoch ``e``, with the engine's
    steps (:func:`~jaxcnn.train.build`), its config's batch size and seed.
    ``on_device`` picks :class:`DeviceFeed` (``steps_per_dispatch`` steps per call; default the
    config's) over :class:`HostFeed`; both give the same batches in the same order (mirrored
    alike with ``flip="alternate"``)."""
    config = engine.config
    alternate = engine.preprocess.alternating_flips
    if on_device:
        k = config.steps_per_dispatch if steps_per_dispatch is None else steps_per_dispatch
        return DeviceFeed(engine.indexed_step, dataset, config.batch_size, engine.mesh,
                          config.seed, k, alternate_flip=alternate)
    return HostFeed(engine.train_step, dataset, config.batch_size, engine.mesh, config.seed,
                    alternate_flip=alternate)


def _stack_metrics(entries, stacked: bool) -> dict[str, np.ndarray]:
    """Fetch a list of per-dispatch metric dicts to host arrays with a leading steps axis."""
    got = jax.device_get(entries)
    join = np.concatenate if stacked else np.stack
    return {k: join([np.asarray(g[k]) for g in got]) for k in got[0]}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _to_host(x) -> np.ndarray:
    """A (possibly multi-process sharded) global array as one host numpy array."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _evaluate(eval_step, state, dataset, batch_size, mesh, *, keep_logits, progress=False):
    from jaxcnn.data import epoch_batches, num_batches, pad_batch

    batch_size = padded_batch_size(batch_size, mesh, len(dataset))
    local = batch_size // jax.process_count()
    sums: dict[str, Any] = {}
    logits = []
    batches = epoch_batches(dataset, batch_size, shuffle=False, drop_remainder=False)
    total = num_batches(len(dataset), batch_size, drop_remainder=False)
    bar = _tqdm(total=total, desc="eval", leave=False, disable=not progress)
    for images, labels in batches:
        images, labels, mask = pad_batch(images, labels, local)
        x, y, m = shard_batch(mesh, images, labels, mask)
        out = eval_step(state, x, y, m)
        for k, v in out.items():
            if k != "logits":
                sums[k] = v if k not in sums else sums[k] + v
        if keep_logits:
            lg = _to_host(out["logits"])
            real = _to_host(m) > 0  # every process's padding sits after its own rows
            logits.append(lg[..., real, :])
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
    """Evaluate a (single-model or ensemble) state on a whole dataset, data parallel.

    Args:
      state: a TrainState; an ensemble state (``state.step.ndim == 1``) is evaluated per member.
      dataset: an ``ArrayDataset`` (uint8 images (N, H, W, C), int labels (N,)).
      preprocess: its normalisation is applied (no augmentation).
      batch_size: eval batch, any positive int; capped at N and rounded up to a multiple of the
        device count; the last batch is padded and masked (one compiled shape, no example
        dropped).
      mesh: default :func:`make_mesh` (every device).

    Returns:
      ``{"loss", "accuracy", "logits"}``: mean cross-entropy and accuracy (floats, or (K,)
      arrays for an ensemble, which also gets ``ensemble_loss``/``ensemble_accuracy`` of the
      averaged probabilities), and float32 logits (N, C) (ensemble: (K, N, C)).
    """
    mesh = make_mesh() if mesh is None else mesh
    padded_batch_size(batch_size, mesh)  # a bad value is a ValueError here, before any jit
    ensemble = np.ndim(state.step) == 1
    num_classes = getattr(dataset, "num_classes", None)
    eval_step = jitted_eval_step(preprocess, num_classes, mesh, ensemble)
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


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@reuse_freed_memory()  # XLA:CPU's step buffers stay mapped (jaxcnn.host_malloc)
def fit(
    model: nn.Module,
    train_ds,
    eval_ds,
    *,
    config: FitConfig,
    workdir: str | os.PathLike,
    normalization: tuple | None = None,
    resume: bool = True,
    progress: bool | None = None,
    verbose: bool = True,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Train ``model`` on ``train_ds``, evaluating on ``eval_ds`` after every epoch.

    Works unchanged on any number of devices (data parallel over :func:`make_mesh`): the train
    batch must split evenly over them (checked first, with valid sizes in the message); the
    eval batch adapts (see ``FitConfig.eval_batch_size``). The state and steps come from
    :func:`~jaxcnn.train.build` (the engine's one builder); everything that shapes the run is
    in ``config`` (optimizer, parameter groups, EMA, augmentation, ``init_fn``, ensemble).

    Args:
      model: a ``jaxcnn.models`` module (its ``num_classes`` must match the data).
      train_ds, eval_ds: ``ArrayDataset``s (uint8 images (N, H, W, C), int32 labels (N,)).
        ``eval_ds`` may be None (no evaluation; "best" then follows the train accuracy).
      config: the :class:`FitConfig` (e.g. a recipe of :mod:`jaxcnn.train.recipes`).
      workdir: run directory: ``checkpoints/{latest,best}`` and ``metrics.jsonl``.
      normalization: ``(mean, std)`` per channel in [0, 1] units (e.g. ``(CIFAR10_MEAN,
        CIFAR10_STD)``); default: those of ``train_ds``. The augmentation is the config's.
      resume: continue from ``checkpoints/latest`` when it exists (the saved configuration must
        match, except the fields in ``FitConfig.RESUMABLE_CHANGES``).
      progress: tqdm bars (loss, accuracy, images/s; refreshed every ``log_every`` steps, the
        only points where the loop waits for the device). Default (None): on when stderr is a
        terminal, off when it goes to a file or pipe, so logs get no carriage-return spam.
      verbose: print one line when resuming (``resumed from epoch N (<workdir>)``) and one line
        per epoch (train loss/acc, eval loss/acc, img/s), with or without bars; False prints
        nothing. Only process 0 prints.
      stop_after_epoch: end this call after that many finished epochs (e.g. to split a long run
        into time slices); the next call with ``resume=True`` continues.

    Returns:
      :class:`FitResult` with the final state and the history: one record per epoch
      ``{epoch, train_loss, train_accuracy, eval_loss, eval_accuracy, lr, images_per_s,
      epoch_seconds}`` (ensembles: means over members, plus ``*_members`` lists and
      ``ensemble_eval_accuracy``; with ``config.eval_ema`` the eval numbers are those of the
      averaged weights). The same records are in ``<workdir>/metrics.jsonl``.

    Raises:
      TrainingDiverged: the loss became NaN/inf; the checkpoint of the last good epoch is kept.
      ValueError: bad configuration (e.g. a batch size the devices cannot split) or a
        checkpoint from a different configuration.
    """
    if eval_ds is not None and not (hasattr(eval_ds, "images") and hasattr(eval_ds, "labels")):
        raise ValueError(f"eval_ds must be an ArrayDataset, got {type(eval_ds).__name__}")
    mesh = make_mesh()
    steps_per_epoch = check_inputs(model, config, train_ds, mesh)
    normalization = resolve_normalization(normalization, train_ds)
    preprocess = make_preprocess(config, *normalization)  # checks the values
    progress = _stderr_is_terminal() if progress is None else bool(progress)
    say = bool(verbose) and jax.process_index() == 0

    def log(msg: str) -> None:
        if not say:
            return
        if progress:
            _tqdm_write(msg)  # keeps an open bar intact
        else:
            print(msg, flush=True)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_config = _run_config(config, model, preprocess, train_ds)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    best = None
    restored = checkpoint.restore(workdir, "latest") if resume else None
    if restored is not None:  # check before any compilation
        _check_resume_config(restored[1].get("config", {}), run_config, workdir)
    engine = build(
        model,
        config,
        train_ds,
        normalization=normalization,
        mesh=mesh,
        restore=None if restored is None else restored[0],
    )
    state = engine.state
    if restored is not None:
        meta = restored[1]
        start_epoch = int(meta["epoch"])
        history = list(meta.get("history", []))
        best = meta.get("best_metric")
        log(f"resumed from epoch {start_epoch} ({workdir})")
    # metrics.jsonl mirrors the checkpointed history (drops records of unsaved epochs).
    metrics_path = workdir / "metrics.jsonl"
    with open(metrics_path, "w") as f:
        for rec in history:
            f.write(json.dumps(rec) + "\n")

    ensemble = config.ensemble > 1
    last_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    on_device = resolve_data_on_device(config.data_on_device, train_ds, mesh)
    feed = None
    for epoch in range(start_epoch, last_epoch):
        if feed is None:  # only when there is an epoch to run (the device copy costs memory)
            feed = make_feed(engine, train_ds, on_device=on_device)
        t0 = time.perf_counter()
        bar = _tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            unit="step",
        )
        metrics_dev = []
        window_start, done, seen, t_window = 0, 0, 0, t0
        for new_state, m, k in feed.epoch(state, epoch):
            state = new_state  # the old state's buffers were donated to the step
            metrics_dev.append(m)
            done += k
            if done // config.log_every > (done - k) // config.log_every or done == steps_per_epoch:
                # The only sync point: fetch the window's metrics (small scalars).
                window = _stack_metrics(metrics_dev[window_start:], feed.on_device)
                losses = np.asarray(window["loss"], np.float64)
                if not np.all(np.isfinite(losses)):
                    bar.close()
                    _diverged(workdir, epoch, done - 1, losses)
                now = time.perf_counter()
                rate = (done - seen) * config.batch_size / max(now - t_window, 1e-9)
                bar.set_postfix(
                    loss=f"{losses.mean():.4f}",
                    acc=f"{np.mean(window['accuracy']):.4f}",
                    img_s=f"{rate:.0f}",
                )
                bar.update(done - seen)
                window_start, seen, t_window = len(metrics_dev), done, now
        bar.close()
        train_seconds = time.perf_counter() - t0
        all_m = _stack_metrics(metrics_dev, feed.on_device)
        train_loss = np.mean(all_m["loss"], axis=0)
        train_acc = np.mean(all_m["accuracy"], axis=0)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": _mean(train_loss),
            "train_accuracy": _mean(train_acc),
        }
        if eval_ds is not None:
            ev = _evaluate(
                engine.eval_step,
                with_ema_params(state) if config.eval_ema else state,
                eval_ds,
                config.eval_batch_size,
                mesh,
                keep_logits=False,
            )
            record["eval_loss"] = _mean(ev["loss"])
            record["eval_accuracy"] = _mean(ev["accuracy"])
        else:
            record["eval_loss"] = record["eval_accuracy"] = None
        record["lr"] = learning_rate_at(engine.schedule, (epoch + 1) * steps_per_epoch - 1)
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
        log(_epoch_line(record, config.epochs, eval_ds is not None))
    return FitResult(
        state=state,
        history=history,
        best_eval_accuracy=best,
        data_on_device=on_device,
        preprocess=preprocess,
    )


def _epoch_line(record: dict, epochs: int, has_eval: bool) -> str:
    msg = (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} acc "
        f"{record['train_accuracy']:.4f}"
    )
    if has_eval:
        msg += f", eval loss {record['eval_loss']:.4f} acc {record['eval_accuracy']:.4f}"
    return msg + f", {record['images_per_s']:.0f} img/s, {record['epoch_seconds']:.1f} s"


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
    "DEVICE_DATA_FRACTION",
    "DeviceFeed",
    "FitConfig",
    "FitResult",
    "HostFeed",
    "TrainingDiverged",
    "dataset_nbytes",
    "evaluate_dataset",
    "fit",
    "make_feed",
    "model_signature",
    "resolve_data_on_device",
]
