"""Head training on cached features and fine-tuning, through ``jaxcnn.train``'s engine.

Both run :func:`jaxcnn.train.make_train_step` (``preprocess=None``: the inputs are ready model
inputs; ``train_bn=False``; ``frozen`` from the freeze labels) on a
:class:`jaxcnn.train.TrainState` whose ``apply_fn`` is :func:`~jaxcnn.transfer.head.
classifier_apply`, with the loss :func:`jaxcnn.train.cross_entropy` (optional class weights),
the optimizer :func:`jaxcnn.train.make_optimizer` (AdamW, cosine schedule, no weight decay on
biases and BatchNorm; :func:`~jaxcnn.transfer.freezing.transfer_optimizer`), the batches of
:func:`jaxcnn.data.batching.epoch_indices` and the batched inference
:func:`jaxcnn.evaluate.run_batched`. Their history has ``fit``'s keys: one record per epoch
``{epoch, train_loss, train_accuracy, eval_loss, eval_accuracy, lr, images_per_s,
epoch_seconds}``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import evaluate
from jaxcnn.data.batching import epoch_indices
from jaxcnn.train import (
    TrainState,
    cross_entropy,
    learning_rate_at,
    make_indexed_train_step,
    make_schedule,
    make_train_step,
)
from jaxcnn.transfer.features import extract_activations, run_on_images
from jaxcnn.transfer.freezing import (
    freeze_labels,
    frozen_mask,
    split_point,
    transfer_optimizer,
)
from jaxcnn.transfer.head import classifier_apply, init_head


def _train_epochs(state, run_epoch, *, epochs, steps, batch_size, schedule, evaluate_fn,
                  log: bool = False):
    """``run_epoch(state, epoch) -> (state, {"loss": (steps,), "accuracy": (steps,)})`` for
    each epoch, then ``evaluate_fn(variables) -> (eval_loss, eval_accuracy)`` (None: no
    evaluation); one ``fit``-style history record per epoch, printed as JSON when ``log``."""
    history = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        state, metrics = run_epoch(state, epoch)
        metrics = jax.device_get(metrics)
        train_seconds = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(metrics["loss"])),
               "train_accuracy": float(np.mean(metrics["accuracy"])),
               "eval_loss": None, "eval_accuracy": None}
        if evaluate_fn is not None:
            rec["eval_loss"], rec["eval_accuracy"] = evaluate_fn(state.variables)
        rec.update(lr=learning_rate_at(schedule, (epoch + 1) * steps - 1),
                   images_per_s=steps * batch_size / train_seconds,
                   epoch_seconds=time.perf_counter() - t0)
        history.append(rec)
        if log:
            print(json.dumps(rec))
    return state, history


def _evaluator(logits_fn, labels, num_classes: int):
    """``variables -> (plain cross-entropy, accuracy)`` of ``logits_fn(variables)`` (the
    logits of the evaluation inputs, from :func:`jaxcnn.evaluate.run_batched`)."""
    labels = np.asarray(labels)

    def evaluate_fn(variables):
        logits = logits_fn(variables)
        loss = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), num_classes,
                             reduction="mean")
        return float(loss), float((logits.argmax(-1) == labels).mean())

    return evaluate_fn


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
    step = jax.jit(make_indexed_train_step(make_train_step(
        None, label_smoothing=label_smoothing, num_classes=num_classes,
        class_weights=class_weights, train_bn=False)))
    xs, ys = jax.device_put(x), jax.device_put(y)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="training head", unit="epoch", leave=False)

    def run_epoch(state, epoch):
        state, metrics = step(state, xs, ys, epoch_indices(len(x), bs, seed=seed, epoch=epoch))
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{float(metrics['loss'].mean()):.3f}",
                            acc=f"{float(metrics['accuracy'].mean()):.3f}")
        return state, metrics

    evaluate_fn = None
    if val is not None:
        predict = jax.jit(state.apply_fn)
        evaluate_fn = _evaluator(lambda v: evaluate.run_batched(
            predict, v, val[0], min(eval_batch_size, len(val[0]))), val[1], num_classes)
    state, history = _train_epochs(
        state, run_epoch, epochs=epochs, steps=steps, batch_size=bs,
        schedule=make_schedule("cosine", lr, total_steps=epochs * steps, warmup_steps=0),
        evaluate_fn=evaluate_fn)
    if bar is not None:
        bar.close()
    return jax.device_get(state.params), history


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
    step = jax.jit(make_fine_tune_step(labels, train.num_classes, freeze_bn=freeze_bn,
                                       label_smoothing=label_smoothing,
                                       class_weights=class_weights))
    predict = jax.jit(state.apply_fn)
    eval_bs = None if val is None else min(eval_batch_size, len(val))
    evaluate_fn = None
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

    def run_epoch(state, epoch):
        idx = epoch_indices(len(train), batch_size, seed=seed, epoch=epoch)
        flips = np.random.default_rng([seed, epoch]).random(idx.shape) < 0.5 if flip else None
        it = range(steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"fine-tune epoch {epoch + 1}/{epochs}", unit="step", leave=False)
        metrics, t0 = [], time.perf_counter()
        for s in it:
            x = train_inputs(idx[s], None if flips is None else flips[s])
            state, m = step(state, x, train.labels[idx[s]])
            metrics.append(m)
            if progress and s % 5 == 0:
                it.set_postfix(loss=f"{float(m['loss']):.3f}", acc=f"{float(m['accuracy']):.3f}",
                               img_s=f"{(s + 1) * batch_size / (time.perf_counter() - t0):.1f}")
        return state, jax.tree.map(lambda *a: jnp.stack(a), *metrics)

    state, history = _train_epochs(
        state, run_epoch, epochs=epochs, steps=steps, batch_size=batch_size,
        schedule=make_schedule("cosine", lr, total_steps=total, warmup_steps=warmup),
        evaluate_fn=evaluate_fn, log=progress)
    return jax.device_get(state.variables), history
