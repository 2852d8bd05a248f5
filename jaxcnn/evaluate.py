"""Evaluation: batched prediction and the classification metrics a CNN course reports.

Everything here is a pure function on arrays. Metrics take host arrays (numpy or jax) and return
numpy values; the only device work is ``predict_logits``, which normalises uint8 images on the
device and runs the model with one fixed batch shape (the last batch is padded), so the forward
pass is compiled once. It runs on JAX's default device whatever the number of devices (no mesh,
so any batch size works on 1, 2, 4 or 8 devices); data-parallel evaluation over every device is
``jaxcnn.train.evaluate_dataset``.

Conventions:
  * ``labels``: int ``(N,)`` true class indices in ``[0, K)``.
  * ``logits`` / ``probs`` / ``scores``: float ``(N, K)``; wherever a function accepts
    predictions, it also accepts scores, and takes their argmax over the last axis.
  * ``pred``: int ``(N,)`` predicted class indices, or scores ``(N, K)``.

Normalisation (the same as training): ``x = (images / 255 - mean) / std`` per channel, with
``mean`` and ``std`` on the [0, 1] scale, e.g. CIFAR-10's ``(0.4914, 0.4822, 0.4465)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "accuracy",
    "classification_report",
    "confusion_matrix",
    "conv_activations",
    "first_conv_kernel",
    "make_forward",
    "most_confident_mistakes",
    "normalize_on_device",
    "per_class_accuracy",
    "predict_logits",
    "precision_recall_f1",
    "run_batched",
    "softmax",
    "top_k_accuracy",
]


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def _as_stats(value, name: str) -> tuple[float, ...]:
    """``mean``/``std`` as a tuple of floats (a scalar becomes a 1-tuple)."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite number or sequence of numbers, got {value!r}")
    if name == "std" and np.any(arr <= 0):
        raise ValueError(f"std must be positive, got {value!r}")
    return tuple(float(v) for v in arr)


def normalize_on_device(images, mean, std, dtype=jnp.float32):
    """``(images / 255 - mean) / std`` in ``dtype``; jit-friendly.

    Args:
      images: uint8 (or integer/float on the 0-255 scale) ``(..., C)``.
      mean, std: per-channel statistics on the [0, 1] scale, shape ``(C,)`` or scalars.

    Returns:
      ``(..., C)`` array of ``dtype``.
    """
    from jaxcnn.data.augment import normalize  # the training pipeline's own normalisation

    return normalize(jnp.asarray(images), mean, std, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _cached_forward(apply_fn, mean: tuple, std: tuple):
    return _build_forward(apply_fn, mean, std)


def _build_forward(apply_fn, mean: tuple, std: tuple):
    # one value for all channels -> a scalar, which broadcasts over any channel count
    mean_arr = np.asarray(mean[0] if len(mean) == 1 else mean, np.float32)
    std_arr = np.asarray(std[0] if len(std) == 1 else std, np.float32)

    @jax.jit
    def forward(variables, images):
        x = normalize_on_device(images, mean_arr, std_arr)
        return jnp.asarray(apply_fn(variables, x, train=False), jnp.float32)

    return forward


def make_forward(apply_fn: Callable, mean, std) -> Callable:
    """A jitted ``forward(variables, images_uint8 (B, H, W, C)) -> logits float32 (B, K)``.

    ``apply_fn`` is called as ``apply_fn(variables, x, train=False)`` with the normalised float32
    ``x`` (``model.apply`` of every jaxcnn model fits). Forwards are cached per
    ``(apply_fn, mean, std)`` when ``apply_fn`` is hashable, so repeated calls reuse one compile.
    """
    mean_t, std_t = _as_stats(mean, "mean"), _as_stats(std, "std")
    if not callable(apply_fn):
        raise ValueError(f"apply_fn must be callable (e.g. model.apply), got {apply_fn!r}")
    try:
        return _cached_forward(apply_fn, mean_t, std_t)
    except TypeError:  # unhashable apply_fn: no cache
        return _build_forward(apply_fn, mean_t, std_t)


def run_batched(forward: Callable, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``forward(variables, batch)`` over ``images`` in fixed-size batches.

    Every call of ``forward`` sees the shape ``(batch_size, H, W, C)``: the last batch is padded
    with zeros and the padded rows are dropped from the result, so ``forward`` compiles once.

    Args:
      forward: ``(variables, (B, H, W, C)) -> (B, K)``.
      images: ``(N, H, W, C)`` host array.
      batch_size: the fixed batch size ``B`` (positive int).

    Returns:
      ``(N, K)`` float32 numpy array.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images is empty (N == 0); pass at least one image")
    outputs = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        m = batch.shape[0]
        if m < batch_size:
            pad = np.zeros((batch_size - m, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        outputs.append((forward(variables, batch), m))  # dispatch asynchronously
    return np.concatenate([np.asarray(out)[:m] for out, m in outputs], axis=0).astype(np.float32)


def predict_logits(
    apply_fn: Callable,
    variables,
    images_uint8,
    *,
    mean,
    std,
    batch_size: int = 256,
) -> np.ndarray:
    """Logits of a model on uint8 images, normalised on device, in fixed-shape batches.

    Args:
      apply_fn: ``apply_fn(variables, x, train=False) -> (B, K)``, e.g. ``model.apply``.
      variables: the model's variables (``{"params": ..., "batch_stats": ...}``).
      images_uint8: uint8 ``(N, H, W, C)``.
      mean, std: per-channel normalisation on the [0, 1] scale, ``(C,)``.
      batch_size: fixed batch size; the last batch is padded so the forward compiles once.

    Returns:
      float32 numpy ``(N, K)``.
    """
    images = np.asarray(images_uint8)
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (N, H, W, C), got {images.shape}; "
            "add a batch axis with images[None] for a single image"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (0-255), got dtype {images.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    mean_t, std_t = _as_stats(mean, "mean"), _as_stats(std, "std")
    channels = images.shape[-1]
    for name, stats in (("mean", mean_t), ("std", std_t)):
        if len(stats) not in (1, channels):
            raise ValueError(
                f"{name} has {len(stats)} values but images have {channels} channels; "
                f"pass one value per channel"
            )
    forward = make_forward(apply_fn, mean_t, std_t)
    return run_batched(forward, variables, images, batch_size)


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``logits`` ``(N, K)`` as float32 numpy."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _labels(labels, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be integer class indices of shape (N,), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels must be >= 0, found {arr.min()}")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(
            f"label {arr.max()} is out of range for num_classes={num_classes}; "
            "labels must be in [0, num_classes)"
        )
    return arr


def _pred(pred, n: int, num_classes: int | None = None) -> np.ndarray:
    """Predicted class indices ``(N,)`` from indices ``(N,)`` or scores ``(N, K)``."""
    arr = np.asarray(pred)
    if arr.ndim == 2:
        if num_classes is not None and arr.shape[1] != num_classes:
            raise ValueError(f"scores have {arr.shape[1]} columns but num_classes={num_classes}")
        arr = arr.argmax(axis=1)
    elif arr.ndim != 1:
        raise ValueError(
            f"predictions must be class indices (N,) or scores (N, K), got shape {arr.shape}"
        )
    if arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} predictions for {n} labels; they must match")
    return _labels(arr, num_classes)


def _num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def accuracy(logits_or_probs, labels) -> float:
    """Fraction of examples whose argmax equals the label.

    Args:
      logits_or_probs: scores ``(N, K)`` (or predicted indices ``(N,)``).
      labels: int ``(N,)``.

    Returns:
      Accuracy in [0, 1] as a Python float.
    """
    y = _labels(labels)
    p = _pred(logits_or_probs, y.shape[0])
    if y.size == 0:
        raise ValueError("accuracy of an empty set is undefined; pass at least one example")
    return float(np.mean(p == y))


def top_k_accuracy(logits, labels, k: int = 5) -> float:
    """Fraction of examples whose label is among the ``k`` highest scores.

    Args:
      logits: scores ``(N, K)``.
      labels: int ``(N,)``.
      k: ``1 <= k <= K``.
    """
    scores = np.asarray(logits)
    if scores.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {scores.shape}")
    y = _labels(labels, scores.shape[1])
    if y.shape[0] != scores.shape[0]:
        raise ValueError(f"got {scores.shape[0]} score rows for {y.shape[0]} labels")
    if y.size == 0:
        raise ValueError("top-k accuracy of an empty set is undefined")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an int in [1, {scores.shape[1]}], got {k!r}")
    # rank of the true class = number of classes scored strictly higher (ties favour the label)
    true_score = np.take_along_axis(scores, y[:, None], axis=1)
    rank = np.sum(scores > true_score, axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of examples with true class ``t`` predicted as ``p``.

    Args:
      pred: predicted indices ``(N,)`` or scores ``(N, K)``.
      labels: int ``(N,)``.
      num_classes: ``K``.

    Returns:
      int64 ``(K, K)``; rows are true classes, columns predicted classes.
    """
    k = _num_classes(num_classes)
    y = _labels(labels, k)
    p = _pred(pred, y.shape[0], k)
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_accuracy(pred, labels, num_classes: int) -> np.ndarray:
    """Accuracy within each true class (the recall of each class).

    Returns:
      float64 ``(K,)``; ``nan`` for classes with no examples in ``labels``.
    """
    cm = confusion_matrix(pred, labels, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def precision_recall_f1(pred, labels, num_classes: int):
    """Per-class precision, recall, F1 and support (0 where undefined, like sklearn's default
    ``zero_division`` with the warning silenced).

    Returns:
      ``(precision, recall, f1, support)``, each ``(K,)``; support is int64.
    """
    cm = confusion_matrix(pred, labels, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support.astype(np.int64)


def most_confident_mistakes(probs, labels, k: int = 16) -> np.ndarray:
    """Indices of the wrong predictions the model was most sure of.

    Args:
      probs: probabilities (or any scores) ``(N, K)``; confidence is the top score.
      labels: int ``(N,)``.
      k: how many to return (fewer when there are fewer mistakes).

    Returns:
      int64 indices into the ``N`` examples, sorted by the confidence of the wrong prediction,
      highest first (ties keep the original order).
    """
    scores = np.asarray(probs)
    if scores.ndim != 2:
        raise ValueError(f"probs must have shape (N, K), got {scores.shape}")
    y = _labels(labels, scores.shape[1])
    if y.shape[0] != scores.shape[0]:
        raise ValueError(f"got {scores.shape[0]} probability rows for {y.shape[0]} labels")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    pred = scores.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    confidence = scores[wrong, pred[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order[:k]].astype(np.int64)


def classification_report(
    pred,
    labels,
    class_names: Sequence[str] | None = None,
    *,
    num_classes: int | None = None,
    digits: int = 3,
) -> str:
    """A per-class precision / recall / F1 / support table, plus accuracy and averages.

    Args:
      pred: predicted indices ``(N,)`` or scores ``(N, K)``.
      labels: int ``(N,)``.
      class_names: ``K`` names; defaults to ``"0".."K-1"``.
      num_classes: ``K`` when ``class_names`` is not given (else inferred from scores/labels).
      digits: decimals shown.

    Returns:
      The table as a multi-line string.
    """
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} but {len(class_names)} class names were given"
            )
        k = len(class_names)
    elif num_classes is not None:
        k = _num_classes(num_classes)
    else:
        arr = np.asarray(pred)
        y = _labels(labels)
        k = arr.shape[1] if arr.ndim == 2 else int(max(arr.max(initial=0), y.max(initial=0))) + 1
    k = _num_classes(k)
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    precision, recall, f1, support = precision_recall_f1(pred, labels, k)
    total = int(support.sum())
    if total == 0:
        raise ValueError("classification_report needs at least one example")
    acc = float(np.trace(confusion_matrix(pred, labels, k))) / total

    width = max(12, *(len(c) for c in class_names))
    num_w = max(9, digits + 3)
    head = f"{'':>{width}}" + "".join(
        f"{h:>{num_w}}" for h in ("precision", "recall", "f1-score", "support")
    )
    lines = [head, ""]

    def row(name, p, r, f, s):
        return (
            f"{name:>{width}}{p:>{num_w}.{digits}f}{r:>{num_w}.{digits}f}"
            f"{f:>{num_w}.{digits}f}{s:>{num_w}d}"
        )

    for i, name in enumerate(class_names):
        lines.append(row(name, precision[i], recall[i], f1[i], int(support[i])))
    lines.append("")
    blank = ""
    lines.append(
        f"{'accuracy':>{width}}{blank:>{num_w}}{blank:>{num_w}}"
        f"{acc:>{num_w}.{digits}f}{total:>{num_w}d}"
    )
    lines.append(row("macro avg", precision.mean(), recall.mean(), f1.mean(), total))
    w = support / total
    lines.append(row("weighted avg", float(precision @ w), float(recall @ w), float(f1 @ w), total))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Looking inside a trained model
# --------------------------------------------------------------------------------------------


def first_conv_kernel(variables) -> np.ndarray:
    """The first convolution's kernel ``(kh, kw, C_in, C_out)`` of a model.

    The first layer is the one that reads the image, so among all 4-D ``kernel`` leaves the one
    with the fewest input channels wins (image channels, 1 or 3, are fewer than any hidden
    width); ties are broken by the layer path in natural order (``Conv_2`` before ``Conv_10``).
    Dict order is not used: jit and checkpoint restores return keys sorted.

    Args:
      variables: ``{"params": ...}`` or the params tree itself.

    Raises:
      ValueError: the model has no 4-D kernel (e.g. an MLP).
    """
    import re

    tree = variables.get("params", variables) if hasattr(variables, "get") else variables
    found: list[tuple[str, object]] = []

    def walk(node, prefix):
        if hasattr(node, "items"):
            for key, value in node.items():
                path = f"{prefix}/{key}"
                if key == "kernel" and len(getattr(value, "shape", ())) == 4:
                    found.append((path, value))
                else:
                    walk(value, path)

    walk(tree, "")
    if not found:
        raise ValueError(
            "no 4-D convolution kernel found in the params; first-layer filters exist only for "
            "convolutional models (e.g. cnn3, not mlp)"
        )

    def natural(path: str):
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]

    _, kernel = min(found, key=lambda item: (item[1].shape[2], natural(item[0])))
    return np.asarray(kernel)


def conv_activations(model, variables, images_uint8, *, mean, std) -> dict[str, np.ndarray]:
    """Outputs of every convolution layer (``nn.Conv``, ``layers.Conv``, ``layers.DepthwiseConv``)
    of ``model`` for a few images (inference mode).

    Args:
      model: a Flax linen module following the jaxcnn convention.
      variables: its variables.
      images_uint8: uint8 ``(N, H, W, C)`` (keep N small: all activations are returned).
      mean, std: normalisation on the [0, 1] scale.

    Returns:
      ``{"Conv_0": (N, H', W', C'), ...}`` float32 numpy, in the order the layers ran; the
      key is the module path joined with ``/``.
    """
    import flax.linen as nn

    from jaxcnn.models.layers import Conv, DepthwiseConv

    conv_types = (nn.Conv, Conv, DepthwiseConv)  # flax's and jaxcnn's fast CPU layers
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"images_uint8 must be uint8 (N, H, W, C), got {images.dtype} {images.shape}"
        )
    mean_t, std_t = _as_stats(mean, "mean"), _as_stats(std, "std")
    mean_a = np.asarray(mean_t[0] if len(mean_t) == 1 else mean_t, np.float32)
    std_a = np.asarray(std_t[0] if len(std_t) == 1 else std_t, np.float32)
    x = normalize_on_device(images, mean_a, std_a)
    _, state = model.apply(
        variables,
        x,
        train=False,
        capture_intermediates=lambda mdl, method: isinstance(mdl, conv_types)
        and method == "__call__",
        mutable=["intermediates"],
    )
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if key == "__call__":
                out[prefix] = np.asarray(value[0], np.float32)
            elif hasattr(value, "items"):
                walk(value, f"{prefix}/{key}" if prefix else key)

    walk(state.get("intermediates", {}), "")
    if not out:
        raise ValueError(f"{type(model).__name__} has no convolution layer to capture")
    return out
