"""The fit loop: :func:`fit` trains what :func:`~jaxcnn.train.build` builds, epoch by epoch,
through the phases of :mod:`jaxcnn.train.phases` (restore or start, run an epoch, evaluate,
record, save: checkpoints, ``metrics.jsonl``, resume).

Everything that shapes a run is in the :class:`~jaxcnn.train.FitConfig`: a lesson configures
the engine, never copies it. ``fit`` is deterministic given ``config.seed``: the init key (and
the key of the config's ``init_fn``), every step key (``fold_in(rng, step)``) and every epoch's
data order (``epoch_batches(seed=seed, epoch=epoch)``) depend only on the seed, and the
checkpoint stores the full state (optimizer state and its EMA of the weights included), so a
run stopped after epoch k and resumed ends with the same params as an uninterrupted run
(bitwise on CPU).

The training batches come from a feed (:mod:`jaxcnn.train.feeds`, ``FitConfig.data_on_device``):
gathered on the host and copied per step, or gathered on the device from a copy of the training
set; the same batches in the same order either way. Any device count: the train batch must
split evenly over the devices (a clear ValueError naming valid sizes, before any compilation);
evaluation batches adapt (:mod:`jaxcnn.train.evaluation`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax

from jaxcnn.ops import backend
from jaxcnn.train import checkpoint
from jaxcnn.train.builder import build
from jaxcnn.train.config import FitConfig
from jaxcnn.train.ema import with_ema_params
from jaxcnn.train.evaluation import evaluate_batches, evaluate_dataset
from jaxcnn.train.feeds import (
    DEVICE_DATA_FRACTION,
    DeviceFeed,
    HostFeed,
    dataset_nbytes,
    make_feed,
    resolve_data_on_device,
)
from jaxcnn.train.mesh import make_mesh
from jaxcnn.train.phases import (
    Run,
    Start,
    TrainingDiverged,
    make_workdir,
    stderr_is_terminal,
    train_epochs,
)
from jaxcnn.train.runconfig import model_signature
from jaxcnn.train.state import TrainState
from jaxcnn.train.steps import Preprocess


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
    in ``config`` (optimizer, parameter groups, EMA, augmentation, ``init_fn``, ensemble,
    the kernels: ``config.backend``, entered for the whole call). The body is the phases of
    :mod:`jaxcnn.train.phases`: restore or start, then per epoch run, evaluate, record, save.

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
      ValueError: bad configuration (e.g. a batch size the devices cannot split), a workdir
        that is a file, or a checkpoint from a different configuration (``FitConfig.
        RESUMABLE_CHANGES`` aside). All before anything is compiled.
    """
    if eval_ds is not None and not (hasattr(eval_ds, "images") and hasattr(eval_ds, "labels")):
        raise ValueError(f"eval_ds must be an ArrayDataset, got {type(eval_ds).__name__}")
    if not isinstance(config, FitConfig):
        raise ValueError(f"config must be a FitConfig, got {type(config).__name__}")
    workdir = make_workdir(workdir)
    with backend.use(_backend_of(config)), _precision(config.matmul_precision):
        # Restore or initialise: build checks the inputs and a checkpoint's configuration
        # before it compiles anything, then starts from the checkpoint or a fresh init.
        mesh = make_mesh()
        restored = checkpoint.restore(workdir, "latest") if resume else None
        engine = build(model, config, train_ds, normalization=normalization, mesh=mesh,
                       restore=restored)
        run = Run(
            workdir=workdir,
            run_config=engine.run_config,
            epochs=config.epochs,
            steps_per_epoch=engine.steps_per_epoch,
            batch_size=config.batch_size,
            schedule=engine.schedule,
            log_every=config.log_every,
            keep_checkpoints=config.keep_checkpoints,
            progress=stderr_is_terminal() if progress is None else bool(progress),
            verbose=bool(verbose),
            eval_every=config.eval_every,
        )
        on_device = resolve_data_on_device(config.data_on_device, train_ds, mesh)

        def evaluate(state):  # the evaluate phase (the EMA weights with config.eval_ema)
            if eval_ds is None:
                return None
            return evaluate_batches(engine.eval_step,
                                    with_ema_params(state) if config.eval_ema else state,
                                    eval_ds, config.eval_batch_size, mesh, keep_logits=False)

        state, history, best = train_epochs(
            run, engine.state, Start.of(restored),
            lambda: make_feed(engine, train_ds, on_device=on_device), evaluate,
            last_epoch=stop_after_epoch,
        )
    return FitResult(state=state, history=history, best_eval_accuracy=best,
                     data_on_device=on_device, preprocess=engine.preprocess)


def _precision(matmul_precision: str | None):
    """``jax.default_matmul_precision(matmul_precision)``; nothing for None (the setting around
    the call stays)."""
    if matmul_precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(matmul_precision)


def _backend_of(config: FitConfig) -> str:
    """The backend ``fit`` runs with: the config's; for ``"auto"`` the setting around the call
    (``backend.use`` or ``$JAXCNN_BACKEND``), which is itself ``"auto"`` by default."""
    return backend.selected() if config.backend == "auto" else config.backend


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
