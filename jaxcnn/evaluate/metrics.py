"""Classification metrics, computed by scikit-learn on checked inputs.

Every function takes host arrays (numpy or jax) and returns numpy values. The classes are
always ``0 .. K-1`` and passed to scikit-learn explicitly, so a class absent from the labels or
the predictions still has its row and column (a ``(K, K)`` confusion matrix, ``K`` per-class
values); undefined ratios (a class never predicted, or without examples) are 0, as with
scikit-learn's ``zero_division=0``, except in :func:`per_class_accuracy`, where they are NaN.

Conventions:
  * ``labels``: int ``(N,)`` true class indices in ``[0, K)``.
  * ``logits`` / ``probs`` / ``scores``: float ``(N, K)``; wherever a function accepts
    predictions, it also accepts scores, and takes their argmax over the last axis.
  * ``pred``: int ``(N,)`` predicted class indices, or scores ``(N, K)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from jaxcnn.data.class_balance import balanced_class_weights  # re-exported: its old home

__all__ = [
    "accuracy",
    "balanced_class_weights",
    "classification_report",
    "confusion_matrix",
    "most_confident_mistakes",
    "per_class_accuracy",
    "precision_recall_f1",
    "top_k_accuracy",
]


def _sklearn_metrics():
    """``sklearn.metrics``, imported on first use (prediction alone never loads scikit-learn)."""
    from sklearn import metrics

    return metrics


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
            f"labels must lie in [0, {num_classes})"
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


def _scores(scores, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` ``(N, K)`` and matching ``labels`` ``(N,)`` in ``[0, K)``."""
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got {arr.shape}")
    y = _labels(labels, arr.shape[1])
    if y.shape[0] != arr.shape[0]:
        raise ValueError(f"got {arr.shape[0]} rows of {name} for {y.shape[0]} labels")
    return arr, y


def _num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def _count(k, name: str, lo: int, hi: int | None = None) -> int:
    """An int ``k`` in ``[lo, hi]`` (no upper bound when ``hi`` is None)."""
    if (
        isinstance(k, bool)
        or not isinstance(k, int | np.integer)
        or k < lo
        or (hi is not None and k > hi)
    ):
        bound = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
        raise ValueError(f"{name} must be {bound}, got {k!r}")
    return int(k)


def _checked(pred, labels, num_classes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true, y_pred, classes 0..K-1)``, checked, for scikit-learn's ``labels=``."""
    k = _num_classes(num_classes)
    y = _labels(labels, k)
    return y, _pred(pred, y.shape[0], k), np.arange(k)


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
    return float(_sklearn_metrics().accuracy_score(y, p))


def top_k_accuracy(logits, labels, k: int = 5) -> float:
    """Fraction of examples whose label is among the ``k`` highest scores.

    Computed by scikit-learn's ``top_k_accuracy_score``, which ranks tied scores by class
    index (the higher index first).

    Args:
      logits: scores ``(N, K)``.
      labels: int ``(N,)``.
      k: ``1 <= k <= K``; ``k == K`` is 1.0 (every label is among all the scores).
    """
    scores, y = _scores(logits, labels, "logits")
    if y.size == 0:
        raise ValueError("top-k accuracy of an empty set is undefined")
    num_classes = scores.shape[1]
    k = _count(k, "k", 1, num_classes)
    if k == num_classes:
        return 1.0  # scikit-learn warns that this is meaningless; it is exact
    if num_classes == 2:
        # scikit-learn reads two score columns as a binary problem with one score per example;
        # a third class that always scores lowest keeps it a 2-D ranking of the same order.
        scores = np.concatenate([scores, np.full((len(y), 1), scores.min() - 1.0)], axis=1)
    classes = np.arange(scores.shape[1])
    return float(_sklearn_metrics().top_k_accuracy_score(y, scores, k=k, labels=classes))


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of examples with true class ``t`` predicted as ``p``.

    Args:
      pred: predicted indices ``(N,)`` or scores ``(N, K)``.
      labels: int ``(N,)``.
      num_classes: ``K``.

    Returns:
      int64 ``(K, K)``; rows are true classes, columns predicted classes (all zeros for N = 0).
    """
    y, p, classes = _checked(pred, labels, num_classes)
    if y.size == 0:
        return np.zeros((classes.size, classes.size), np.int64)
    with warnings.catch_warnings():  # K == 1: a (1, 1) matrix is right, the labels were passed
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        return _sklearn_metrics().confusion_matrix(y, p, labels=classes).astype(np.int64)


def _prfs(pred, labels, num_classes, zero_division):
    """Per-class precision, recall, F1 and support from scikit-learn (undefined: zero_division)."""
    y, p, classes = _checked(pred, labels, num_classes)
    if y.size == 0:
        undefined = np.full(classes.size, float(zero_division))
        return undefined, undefined.copy(), undefined.copy(), np.zeros(classes.size, np.int64)
    precision, recall, f1, support = _sklearn_metrics().precision_recall_fscore_support(
        y, p, labels=classes, zero_division=zero_division
    )
    return precision, recall, f1, support.astype(np.int64)


def per_class_accuracy(pred, labels, num_classes: int) -> np.ndarray:
    """Accuracy within each true class (the recall of each class).

    Returns:
      float64 ``(K,)``; ``nan`` for classes with no examples in ``labels``.
    """
    return _prfs(pred, labels, num_classes, np.nan)[1]


def precision_recall_f1(pred, labels, num_classes: int):
    """Per-class precision, recall, F1 and support (0 where undefined: scikit-learn's
    ``precision_recall_fscore_support`` with ``zero_division=0``).

    Returns:
      ``(precision, recall, f1, support)``, each ``(K,)``; support is int64.
    """
    return _prfs(pred, labels, num_classes, 0.0)


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
    scores, y = _scores(probs, labels, "probs")
    k = _count(k, "k", 0)
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
    """scikit-learn's per-class precision / recall / F1 / support table, with accuracy and the
    macro and weighted averages, over all ``K`` classes.

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
        k = num_classes
    else:
        arr = np.asarray(pred)
        y = _labels(labels)
        k = arr.shape[1] if arr.ndim == 2 else int(max(arr.max(initial=0), y.max(initial=0))) + 1
    y, p, classes = _checked(pred, labels, k)
    if y.size == 0:
        raise ValueError("classification_report needs at least one example")
    return _sklearn_metrics().classification_report(
        y,
        p,
        labels=classes,
        target_names=class_names or [str(c) for c in classes],
        digits=_count(digits, "digits", 0),
        zero_division=0,
    )
