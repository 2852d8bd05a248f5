"""Pure train and eval steps; preprocessing (augment + normalise) runs inside them, on device.

``make_train_step`` and ``make_eval_step`` return plain Python functions of arrays. Compile them
once with :func:`jaxcnn.train.mesh.jit_train_step` / ``jit_eval_step`` (data parallel over a
mesh) or ``jax.jit``. Everything that changes the compiled program is static and fixed when
the step is made: the :class:`Preprocess` config, ``label_smoothing``, ``num_classes``,
``class_weights``, ``train_bn`` and ``frozen``, plus the state's ``apply_fn`` and ``tx`` (static
pytree fields). The batch shape is the only other compile key, so training (``drop_remainder``)
and evaluation (``pad_batch``) each compile once. :func:`make_indexed_train_step` wraps a train
step to gather its batches from a dataset that already lives on the device (K steps per call
with ``lax.scan``).

The same steps train every model of the library, transfer learning included
(:mod:`jaxcnn.transfer`): ``preprocess=None`` takes inputs that are already model inputs (cached
float features or activations), the state's ``apply_fn`` may be any function with
``model.apply``'s signature (a split model's top part, a head on features), ``train_bn=False``
keeps BatchNorm in inference mode and ``frozen`` cuts the gradient of frozen leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.train.state import TrainState


@dataclass(frozen=True)
class Preprocess:
    """How uint8 batches become model inputs, on device.

    Attributes:
      mean, std: per-channel statistics in [0, 1] units (e.g. ``CIFAR10_MEAN``), tuples.
      augment: apply random crop / flip / cutout in the train step (never in eval).
      crop_pad: reflect-padding of the random crop (0: no crop).
      flip: True: random horizontal flip (each image with probability 1/2, from the step key);
        False: none; ``"alternate"``: no random flip here, the images come mirrored already:
        the batch feeds mirror them by :func:`~jaxcnn.data.alternating_flip_mask` (host path)
        or the indexed step does after its gather (``flips``), see
        :attr:`alternating_flips`. The random crop and cutout apply either way.
      cutout_size: side of the cutout square (0: none).
      dtype: dtype of the normalised input (``"float32"`` or ``"bfloat16"``); the model's own
        ``dtype`` option sets its compute dtype.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    crop_pad: int = 4
    flip: bool | str = True
    cutout_size: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        mean = tuple(float(m) for m in np.ravel(np.asarray(self.mean, np.float64)))
        std = tuple(float(s) for s in np.ravel(np.asarray(self.std, np.float64)))
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean {mean} and std {std} must be non-empty and the same length")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if self.crop_pad < 0 or self.cutout_size < 0:
            raise ValueError(
                f"crop_pad and cutout_size must be >= 0, got {self.crop_pad}, {self.cutout_size}"
            )
        if isinstance(self.flip, str) and self.flip != "alternate":
            raise ValueError(f"flip must be True, False or 'alternate', got {self.flip!r}")
        if not isinstance(self.flip, str):
            object.__setattr__(self, "flip", bool(self.flip))
        dtype = jnp.dtype(self.dtype).name
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "dtype", dtype)

    @property
    def alternating_flips(self) -> bool:
        """True when the training batches arrive mirrored by the feed (``augment`` and
        ``flip == "alternate"``): the indexed step then takes a ``flips`` mask."""
        return bool(self.augment) and self.flip == "alternate"

    def train(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """(N, H, W, C) uint8 -> augmented (if ``augment``) and normalised (N, H, W, C) float."""
        from jaxcnn.data import augment

        if self.augment:
            images = augment(
                rng,
                images,
                crop_pad=self.crop_pad,
                flip=self.flip is True,  # "alternate": mirrored by the feed already
                cutout_size=self.cutout_size,
            )
        return self.eval(images)

    def eval(self, images: jax.Array) -> jax.Array:
        """(N, H, W, C) uint8 -> normalised (N, H, W, C) float (no randomness)."""
        from jaxcnn.data import normalize

        return normalize(images, self.mean, self.std, dtype=jnp.dtype(self.dtype))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment,
            "crop_pad": self.crop_pad,
            "flip": self.flip,
            "cutout_size": self.cutout_size,
            "dtype": self.dtype,
        }


REDUCTIONS = ("none", "mean")


def cross_entropy(
    logits,
    labels,
    num_classes: int,
    label_smoothing: float = 0.0,
    *,
    class_weights=None,
    reduction: str = "none",
):
    """Softmax cross-entropy in float32, per example or as the batch loss.

    Args:
      logits: (N, num_classes) any float dtype (cast to float32).
      labels: (N,) int class indices.
      label_smoothing: mass spread uniformly over all classes (optax.smooth_labels).
      class_weights: optional (num_classes,) weight of each class: example ``i`` counts
        ``w[labels[i]]`` times (e.g. balanced weights for imbalanced data).
      reduction: ``"none"``: the (N,) per-example losses (times ``w[labels]`` when weighted);
        ``"mean"``: their mean, or with ``class_weights`` the weighted mean
        ``sum_i w[y_i] ce_i / sum_i w[y_i]`` (the convention of PyTorch's
        ``CrossEntropyLoss(weight=...)``), a () scalar.

    Returns:
      (N,) or () float32.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    if class_weights is None:
        return losses.mean() if reduction == "mean" else losses
    w = jnp.asarray(class_weights, jnp.float32)[labels]
    if reduction == "mean":
        return jnp.sum(losses * w) / jnp.sum(w)
    return losses * w


def _check_step_config(label_smoothing, num_classes):
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")


def _check_preprocess(preprocess):
    if preprocess is not None and not isinstance(preprocess, Preprocess):
        raise ValueError(
            f"preprocess must be a Preprocess or None (inputs are model inputs already), got "
            f"{type(preprocess).__name__}"
        )


def _check_class_weights(class_weights, num_classes: int | None = None) -> np.ndarray | None:
    """``class_weights`` as a (K,) float32 array of finite non-negative weights, not all zero
    (K = ``num_classes`` when given); None stays None."""
    if class_weights is None:
        return None
    w = np.asarray(class_weights, np.float32)
    if (
        w.ndim != 1
        or not len(w)
        or (num_classes is not None and len(w) != num_classes)
        or not np.all(np.isfinite(w))
        or w.min() < 0
        or not w.sum() > 0
    ):
        want = "(K,)" if num_classes is None else f"({num_classes},)"
        raise ValueError(
            f"class_weights must be {want} finite weights >= 0, not all zero, got "
            f"{np.asarray(class_weights).tolist()}"
        )
    return w


def make_train_step(
    preprocess: Preprocess | None,
    *,
    label_smoothing: float = 0.0,
    num_classes: int | None = None,
    class_weights=None,
    train_bn: bool = True,
    frozen=None,
):
    """A pure train step ``(state, inputs, labels) -> (state, metrics)``.

    Args:
      preprocess: augmentation + normalisation applied on device with the step's key to uint8
        images; None: ``inputs`` are model inputs already (e.g. cached float features or
        activations, :mod:`jaxcnn.transfer`) and enter ``state.apply_fn`` as they are.
      label_smoothing: cross-entropy label smoothing.
      num_classes: width of the one-hot targets; None takes it from the logits.
      class_weights: optional (num_classes,) per-class loss weights: the loss is the weighted
        mean ``sum w[y] ce / sum w[y]`` (:func:`cross_entropy`).
      train_bn: True: BatchNorm uses batch statistics and updates ``batch_stats``
        (``apply_fn(..., train=True, mutable=["batch_stats"])``). False: the model runs with
        ``train=False`` (running statistics, returned unchanged) and still gets
        ``rngs={"dropout": key}``, so a model's own dropout is off but an ``apply_fn`` may
        apply dropout from that key (:func:`jaxcnn.transfer.classifier_apply` does, before
        the head).
      frozen: optional pytree like ``params`` of bools, True for the leaves held fixed: their
        gradient is cut with ``stop_gradient`` (XLA does not compute it). The optimizer must
        give them zero updates too (``jaxcnn.transfer.make_freezing_optimizer``).

    The returned step takes ``inputs: (B, ...)`` (``(B, H, W, C) uint8`` with a
    ``preprocess``), ``labels: (B,) int32`` and returns the updated state and ``{"loss",
    "accuracy"}``: float32 scalars over the batch (the loss is the smoothed, weighted training
    loss; accuracy uses argmax of the train-mode logits). The step's key ``fold_in(state.rng,
    state.step)`` is split into the augmentation key and the dropout key. ``state.apply_fn``
    is called like ``model.apply`` (any function with that signature serves: a split model's
    top part, a head on features).
    """
    _check_preprocess(preprocess)
    _check_step_config(label_smoothing, num_classes)
    weights = _check_class_weights(class_weights, num_classes)

    def train_step(state: TrainState, inputs, labels):
        aug_key, dropout_key = jax.random.split(state.step_rng())
        x = inputs if preprocess is None else preprocess.train(aug_key, inputs)
        update_bn = train_bn and bool(state.batch_stats)

        def loss_fn(params):
            if frozen is not None:
                params = jax.tree.map(
                    lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen
                )
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            kw = dict(train=train_bn, rngs={"dropout": dropout_key})
            if update_bn:
                logits, updates = state.apply_fn(variables, x, mutable=["batch_stats"], **kw)
                new_stats = updates["batch_stats"]
            else:
                logits = state.apply_fn(variables, x, **kw)
                new_stats = state.batch_stats
            n = logits.shape[-1] if num_classes is None else num_classes
            loss = cross_entropy(
                logits, labels, n, label_smoothing, class_weights=weights, reduction="mean"
            )
            return loss, (logits, new_stats)

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads, batch_stats=new_stats)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return state, {"loss": loss, "accuracy": accuracy}

    return train_step


def make_indexed_train_step(train_step, *, batch_sharding=None, unroll: bool | int = 1):
    """Wrap a train step so that it reads its batches from a dataset held on the device.

    Args:
      train_step: ``(state, images, labels) -> (state, metrics)``, e.g. from
        :func:`make_train_step` or :func:`~jaxcnn.train.ensemble.make_ensemble_train_step`.
      batch_sharding: optional sharding each gathered batch is constrained to (the mesh's
        batch sharding; None leaves it to the compiler).
      unroll: ``lax.scan``'s ``unroll``. XLA's CPU backend runs a rolled loop of this step about
        2.6x slower per step than separate calls (cnn3, batch 128, measured), so pass True on
        CPU (compile time then grows with K); accelerators keep the loop rolled (1).

    Returns:
      ``(state, images_all, labels_all, idx, flips=None) -> (state, metrics)`` with
      ``images_all: (N, H, W, C)`` uint8 and ``labels_all: (N,)`` int32 (the whole dataset),
      ``idx: (K, B)`` int32 row indices and optionally ``flips: (K, B)`` bool (airbench's
      alternating flips, :func:`~jaxcnn.data.alternating_flip_mask`): it runs K train steps,
      step k on the batch ``images_all[idx[k]]`` with the rows where ``flips[k]`` mirrored
      (:func:`~jaxcnn.data.flip_rows`), in one program (``lax.scan`` when K > 1), and returns
      the final state and the metrics of every step stacked on a leading K axis. Because each
      step is the unchanged ``train_step`` on the same rows, the results equal K separate calls
      on host batches ``flip_rows(images[idx[k]], flips[k])`` (same keys: ``fold_in(rng,
      state.step)``).
    """

    from jaxcnn.data.augment import flip_rows

    def gather(images_all, labels_all, rows, flips):
        x, y = images_all[rows], labels_all[rows]
        if flips is not None:
            x = flip_rows(x, flips)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        return x, y

    def indexed_step(state, images_all, labels_all, idx, flips=None):
        if idx.ndim != 2:
            raise ValueError(f"idx must be (K, B) row indices, got shape {idx.shape}")
        if flips is not None and flips.shape != idx.shape:
            raise ValueError(f"flips must be (K, B) like idx {idx.shape}, got {flips.shape}")
        if idx.shape[0] == 1:
            f = None if flips is None else flips[0]
            state, metrics = train_step(state, *gather(images_all, labels_all, idx[0], f))
            return state, jax.tree.map(lambda m: m[None], metrics)

        def body(carry, xs):
            rows, f = xs
            return train_step(carry, *gather(images_all, labels_all, rows, f))

        return jax.lax.scan(body, state, (idx, flips), unroll=unroll)

    return indexed_step


def make_eval_step(preprocess: Preprocess | None, *, num_classes: int | None = None):
    """A pure eval step ``(state, inputs, labels, mask) -> metrics``.

    Args:
      preprocess: only its normalisation is used (no augmentation, no randomness); None:
        ``inputs`` are model inputs already (as in :func:`make_train_step`).

    The step takes ``inputs: (B, ...)`` (``(B, H, W, C) uint8`` with a ``preprocess``),
    ``labels: (B,) int``, ``mask: (B,) float`` (1 for real rows, 0 for padding from
    ``pad_batch``) and returns ``{"loss_sum": (), "correct": (), "count": (), "logits": (B,
    num_classes)}`` float32: masked sums of the plain (unsmoothed, unweighted) cross-entropy and
    of correct predictions, and the number of real rows. The model runs with ``train=False``
    (running BatchNorm statistics, no dropout).
    """
    _check_preprocess(preprocess)
    _check_step_config(0.0, num_classes)

    def eval_step(state: TrainState, inputs, labels, mask):
        x = inputs if preprocess is None else preprocess.eval(inputs)
        logits = state.apply_fn(state.variables, x, train=False).astype(jnp.float32)
        n = logits.shape[-1] if num_classes is None else num_classes
        mask = mask.astype(jnp.float32)
        losses = cross_entropy(logits, labels, n)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(losses * mask),
            "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask),
            "logits": logits,
        }

    return eval_step
