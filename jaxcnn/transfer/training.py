"""Head training on cached features and fine-tuning, through ``jaxcnn.train``'s engine.

Both run :func:`jaxcnn.train.make_train_step` (``preprocess=None``: the inputs are ready model
inputs; ``train_bn=False``; ``frozen`` from the freeze labels) on a
:class:`jaxcnn.train.TrainState` whose ``apply_fn`` is :func:`~jaxcnn.transfer.head.
classifier_apply`, with the loss :func:`jaxcnn.train.cross_entropy` (optional class weights),
the optimizer :func:`jaxcnn.train.make_optimizer` (AdamW, cosine schedule, no weight decay on
biases and BatchNorm; :func:`~jaxcnn.transfer.freezing.transfer_optimizer`), the batches of
:func:`jaxcnn.data.batching.epoch_indices` and the batched inference
:func:`jaxcnn.evaluate.run_batched`. Their epochs go through ``fit``'s phases
(:mod:`jaxcnn.train.phases`: restore or start, run an epoch, evaluate, record, save), so with a
``workdir`` they write ``checkpoints/{latest,best}`` and ``metrics.jsonl`` and a killed run
resumes; their history has ``fit``'s keys: one record per epoch ``{epoch, train_loss,
train_accuracy, eval_loss, eval_accuracy, lr, images_per_s, epoch_seconds}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import evaluate
from jaxcnn.data.batching import epoch_indices
from jaxcnn.train import (
    DeviceFeed,
    TrainState,
    checkpoint,
    cross_entropy,
    make_indexed_train_step,
    make_schedule,
    make_train_step,
)
from jaxcnn.train.config import callable_name
from jaxcnn.train.phases import Run, make_workdir, restore_or_start, train_epochs
from jaxcnn.train.runconfig import as_json, model_signature
from jaxcnn.transfer.features import extract_activations, run_on_images
from jaxcnn.transfer.freezing import (
    freeze_labels,
    frozen_mask,
    split_point,
    transfer_optimizer,
)
from jaxcnn.transfer.head import classifier_apply, init_head


def _evaluator(logits_fn, labels, num_classes: int):
    """The evaluate phase: ``state -> {"loss": plain cross-entropy, "accuracy"}`` of
    ``logits_fn(variables)`` (the logits of the evaluation inputs, from
    :func:`jaxcnn.evaluate.run_batched`)."""
    labels = np.asarray(labels)

    def evaluate_fn(state):
        logits = logits_fn(state.variables)
        loss = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), num_classes,
                             reduction="mean")
        return {"loss": float(loss), "accuracy": evaluate.accuracy(logits, labels)}

    return evaluate_fn


def _phase(workdir, resume: bool, state: TrainState, run_config: dict, **run):
    """The :class:`~jaxcnn.train.phases.Run` of a transfer phase (``workdir`` None: nothing
    kept) and its start: ``state``, or its latest checkpoint when ``resume``."""
    run = Run(workdir=None if workdir is None else make_workdir(workdir),
              run_config=as_json(run_config), **run)
    start = restore_or_start(run, resume)
    if start.arrays is not None:
        state = checkpoint.tree_to_state(state, start.arrays)
    return run, state, start


class _InputFeed:
    """The feed of fine-tuning (:mod:`jaxcnn.train.feeds`' protocol): step ``s`` of epoch ``e``
    trains on ``inputs(idx[s], mirror[s])``, ``idx`` the rows of
    :func:`~jaxcnn.data.batching.epoch_indices` and ``mirror`` a random half of them (from
    ``[seed, e]``) when ``flip`` (else None)."""

    on_device = False

    def __init__(self, step, inputs: Callable, labels, batch_size: int, seed: int, flip: bool):
        self.step, self.inputs, self.labels = step, inputs, np.asarray(labels)
        self.batch_size, self.seed, self.flip = batch_size, seed, flip

    def epoch(self, state, epoch: int):
        """Yield ``(state, metrics, 1)`` per step."""
        idx = epoch_indices(len(self.labels), self.batch_size, seed=self.seed, epoch=epoch)
        mirror = (np.random.default_rng([self.seed, epoch]).random(idx.shape) < 0.5
                  if self.flip else None)
        for s, rows in enumerate(idx):
            x = self.inputs(rows, None if mirror is None else mirror[s])
            state, metrics = self.step(state, x, self.labels[rows])
            yield state, metrics, 1


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _state(params, batch_stats, tx, apply_fn, key) -> TrainState:
    """A :class:`jaxcnn.train.TrainState` at step 0 for existing params."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=key, apply_fn=apply_fn, tx=tx)


def _check_features(features, labels, name="features"):
    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.int32)
    if x.ndim != 2 or y.shape != (len(x),) or not len(x):
        raise ValueError(f"{name} must be (N, D) with labels (N,), N > 0, got {x.shape}, "
                         f"{y.shape}")
    return x, y


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    dropout: float = 0.2,
    label_smoothing: float = 0.1,
    class_weights: np.ndarray | None = None,
    seed: int = 0,
    head: dict | None = None,
    eval_batch_size: int = 1024,
    progress: bool = True,
    workdir: str | os.PathLike | None = None,
    resume: bool = True,
) -> tuple[dict, list[dict]]:
    """Train a Dense head on fixed features: AdamW with a cosine schedule, dropout before it.

    Each epoch is one call of the indexed train step (:func:`jaxcnn.train.
    make_indexed_train_step`): the features stay on the device and ``lax.scan`` runs the
    epoch's steps, with no pass through the backbone.

    Args:
      features: (N, D) float32; labels: (N,) int in [0, num_classes).
      val: optional (features, labels) evaluated after every epoch.
      batch_size: capped at N; the last partial batch of an epoch is dropped.
      weight_decay: decoupled, on the kernel only (not the bias).
      class_weights: optional (K,) loss weights (e.g. :func:`jaxcnn.data.image_folder.
        class_weights`) for imbalanced classes.
      head: start from these head params (default: a fresh :func:`init_head`).
      progress: progress bars and one line per epoch.
      workdir: ``checkpoints/`` and ``metrics.jsonl`` of the run, as :func:`jaxcnn.train.fit`
        writes them (None: nothing is kept). resume: continue from its latest checkpoint (the
        settings and the data's shape must be the same; a ValueError names what differs).

    Returns:
      ``(head, history)``: head params and ``fit``'s per-epoch records (``eval_*`` None
      without ``val``).
    """
    x, y = _check_features(features, labels)
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    if val is not None:
        val = _check_features(*val, name="val features")
    bs = min(batch_size, len(x))
    steps = len(x) // bs
    key = jax.random.key(seed)
    params = head if head is not None else init_head(key, x.shape[1], num_classes)
    tx = transfer_optimizer(lr, total_steps=epochs * steps, weight_decay=weight_decay)
    state = _state(params, {}, tx, classifier_apply(dropout=dropout), jax.random.fold_in(key, 1))
    config = dict(phase="head", train_size=len(x), feature_size=x.shape[1],
                  num_classes=num_classes, epochs=epochs, batch_size=bs, lr=lr,
                  weight_decay=weight_decay, dropout=dropout, label_smoothing=label_smoothing,
                  class_weights=_listed(class_weights), seed=seed,
                  head=None if head is None else checkpoint.tree_digest(head))
    schedule = make_schedule("cosine", lr, total_steps=epochs * steps, warmup_steps=0)
    run, state, start = _phase(workdir, resume, state, config, epochs=epochs,
                               steps_per_epoch=steps, batch_size=bs, schedule=schedule,
                               progress=bool(progress), verbose=bool(progress),
                               desc="head epoch")
    step = jax.jit(make_indexed_train_step(make_train_step(
        None, label_smoothing=label_smoothing, num_classes=num_classes,
        class_weights=class_weights, train_bn=False)))
    evaluate_fn = _no_evaluation
    if val is not None:
        predict = jax.jit(state.apply_fn)
        evaluate_fn = _evaluator(lambda v: evaluate.run_batched(
            predict, v, val[0], min(eval_batch_size, len(val[0]))), val[1], num_classes)

    def feed():  # the features on the device, one call per epoch
        return DeviceFeed(step, SimpleNamespace(images=x, labels=y), bs, None, seed,
                          steps_per_dispatch=steps)

    state, history, _ = train_epochs(run, state, start, feed, evaluate_fn)
    return jax.device_get(state.params), history


def _no_evaluation(state):
    return None


def _listed(class_weights):
    return None if class_weights is None else np.asarray(class_weights, np.float64).tolist()


def fine_tune_state(model: nn.Module, variables, tx, *, seed: int = 0, dropout: float = 0.2,
                    start: int | None = None) -> TrainState:
    """A :class:`jaxcnn.train.TrainState` at step 0 for fine-tuning ``variables``: its
    ``apply_fn`` is :func:`~jaxcnn.transfer.head.classifier_apply` (``model`` with dropout on
    the features before the head; ``start``: the inputs are the activations entering module
    ``start``) and its key ``jax.random.key(seed)``."""
    return _state(variables["params"], variables.get("batch_stats", {}), tx,
                  classifier_apply(model, dropout=dropout, start=start), jax.random.key(seed))


def make_fine_tune_step(labels, num_classes: int, *, freeze_bn: bool = True,
                        label_smoothing: float = 0.0, class_weights=None):
    """:func:`jaxcnn.train.make_train_step` for fine-tuning: ``(state, x, y) -> (state,
    {"loss", "accuracy"})`` on ready inputs (preprocessed images, or cached activations with a
    :func:`fine_tune_state` made with ``start``), the leaves labelled frozen in ``labels``
    (:func:`~jaxcnn.transfer.freezing.freeze_labels`) behind ``stop_gradient``, BatchNorm in
    inference mode when ``freeze_bn`` (running statistics, unchanged), else batch statistics
    (updated). Pair it with a state whose ``tx`` freezes the same labels."""
    return make_train_step(None, label_smoothing=label_smoothing, num_classes=num_classes,
                           class_weights=class_weights, train_bn=not freeze_bn,
                           frozen=frozen_mask(labels))


def fine_tune(
    model: nn.Module,
    variables,
    train,
    val,
    preprocess_fn: Callable[[np.ndarray], np.ndarray],
    *,
    trainable: Sequence[str],
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    freeze_bn: bool = True,
    dropout: float = 0.2,
    label_smoothing: float = 0.1,
    flip: bool = True,
    class_weights=None,
    eval_batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    cache_activations: bool = True,
    cache_dir: str | os.PathLike | None = None,
    cache_name: str = "activations",
    workdir: str | os.PathLike | None = None,
    resume: bool = True,
) -> tuple[dict, list[dict]]:
    """Phase 2: train the modules in ``trainable`` (see :func:`~jaxcnn.transfer.freezing.
    top_blocks`) with the head, on images.

    **Cached activations (default).** The modules below the lowest trainable one are frozen
    and, with ``freeze_bn``, run in inference mode (running BatchNorm statistics; the model
    has no dropout or drop-connect below the head), so their output is a fixed function of
    the image. With ``cache_activations`` it is computed once
    (:func:`~jaxcnn.transfer.features.extract_activations`: train images, their mirror images
    when ``flip``, and the ``val`` images; stored float32 in ``cache_dir`` when given, else held
    in memory) and every step runs only the top part (``model.from_block``): the same updates
    as the full forward pass (same batches, flips and dropout keys; equal params up to float
    rounding). The price: the only augmentation in phase 2 is the horizontal flip (both
    orientations are cached, which doubles the one-time pass over the training images). It
    needs a model with a split forward (:func:`~jaxcnn.transfer.freezing.split_point`, e.g.
    EfficientNet-Lite) and ``freeze_bn=True``; otherwise, or with ``cache_activations=False``,
    every step runs the whole network on the preprocessed images (required to update
    BatchNorm statistics, ``freeze_bn=False``, or to add image augmentation).

    Args:
      model, variables: the network with its trained head (:func:`~jaxcnn.transfer.head.
        with_head`).
      train, val: :class:`jaxcnn.data.ArrayDataset` (uint8); ``val`` may be None.
      preprocess_fn: host uint8 batch -> float32 input (:func:`~jaxcnn.transfer.features.
        image_preprocess`).
      lr: peak AdamW learning rate (warm-up over half an epoch, then cosine): 10-100x below
        the head's.
      weight_decay: decoupled, on the trainable kernels only (not biases or BatchNorm).
      freeze_bn: keep BatchNorm statistics (see :mod:`jaxcnn.transfer` for why).
      flip: random horizontal flips of the training images (on the host).
      eval_batch_size: batch of evaluation and of the one-time activation pass.
      cache_activations: run only the trainable top part per step (above); falls back to the
        full forward pass when that is not possible.
      cache_dir, cache_name: the activations are cached as ``<cache_dir>/<cache_name>-train-
        <hash>.npz`` (and ``-train-flipped``, ``-val``); None keeps them in memory only.
      progress: progress bars and one line per epoch.
      workdir: ``checkpoints/`` and ``metrics.jsonl`` of the run, as :func:`jaxcnn.train.fit`
        writes them (None: nothing is kept). resume: continue from its latest checkpoint (the
        settings, the starting ``variables`` and the data's shape must be the same; a
        ValueError names what differs).

    Returns:
      ``(variables, history)`` with ``fit``'s history keys.
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    params = variables["params"]
    labels = freeze_labels(params, trainable)
    steps = len(train) // batch_size
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train)} training images")
    total = epochs * steps
    warmup = max(0, min(steps // 2, total - 1))
    tx = transfer_optimizer(lr, total_steps=total, warmup_steps=warmup,
                            weight_decay=weight_decay, labels=labels)
    start = split_point(model, params, trainable) if cache_activations and freeze_bn else None
    state = fine_tune_state(model, variables, tx, seed=seed, dropout=dropout, start=start)
    config = dict(phase="fine_tune", model=model_signature(model),
                  variables=checkpoint.tree_digest(variables), trainable=_named(trainable),
                  train_size=len(train), image_shape=list(train.image_shape),
                  num_classes=train.num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, freeze_bn=freeze_bn, dropout=dropout,
                  label_smoothing=label_smoothing, flip=flip,
                  class_weights=_listed(class_weights), seed=seed, cached=start is not None)
    schedule = make_schedule("cosine", lr, total_steps=total, warmup_steps=warmup)
    run, state, resumed = _phase(workdir, resume, state, config, epochs=epochs,
                                 steps_per_epoch=steps, batch_size=batch_size,
                                 schedule=schedule, log_every=5, progress=bool(progress),
                                 verbose=bool(progress), desc="fine-tune epoch")
    step = jax.jit(make_fine_tune_step(labels, train.num_classes, freeze_bn=freeze_bn,
                                       label_smoothing=label_smoothing,
                                       class_weights=class_weights))
    predict = jax.jit(state.apply_fn)
    eval_bs = None if val is None else min(eval_batch_size, len(val))
    evaluate_fn = _no_evaluation
    if start is None:
        if progress and cache_activations:
            print("fine-tune: full forward pass per step (cached activations need a model "
                  "with a split forward and freeze_bn=True)")

        def train_inputs(idx, mirror):
            imgs = train.images[idx]
            if mirror is not None:
                imgs = np.where(mirror[:, None, None, None], imgs[:, :, ::-1], imgs)
            return preprocess_fn(imgs)

        if val is not None:
            evaluate_fn = _evaluator(lambda v: run_on_images(
                predict, v, val.images, preprocess_fn, eval_bs), val.labels, train.num_classes)
    else:
        def acts(images, part, mirrored=False):
            return extract_activations(model, variables, images, preprocess_fn, start,
                                       eval_batch_size, flip=mirrored, cache_dir=cache_dir,
                                       name=f"{cache_name}-{part}", progress=progress)

        a_train = acts(train.images, "train")
        a_flip = acts(train.images, "train-flipped", True) if flip else None
        if progress:
            print(f"fine-tune: cached activations entering {model.module_names()[start]} "
                  f"{a_train.shape[1:]}; each step runs the top part only")

        def train_inputs(idx, mirror):
            if mirror is None:
                return a_train[idx]
            return np.where(mirror[:, None, None, None], a_flip[idx], a_train[idx])

        if val is not None:
            a_val = acts(val.images, "val")
            evaluate_fn = _evaluator(lambda v: evaluate.run_batched(predict, v, a_val, eval_bs),
                                     val.labels, train.num_classes)

    def feed():
        return _InputFeed(step, train_inputs, train.labels, batch_size, seed, flip)

    state, history, _ = train_epochs(run, state, resumed, feed, evaluate_fn)
    return jax.device_get(state.variables), history


def _named(trainable):
    """``trainable`` (module names or a predicate) as a JSON value for the run config."""
    return callable_name(trainable) if callable(trainable) else list(trainable)
