"""Loss weights that balance the classes of an imbalanced dataset.

::

    from jaxcnn.data import balanced_class_weights

    weights = balanced_class_weights(train.labels, train.num_classes)   # (K,): n / (K * count)
"""

from __future__ import annotations

import numpy as np

__all__ = ["balanced_class_weights"]


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """Loss weights that balance the classes: ``n / (K * count_c)``, scikit-learn's
    ``compute_class_weight("balanced")``, with 0 for a class that has no example.

    scikit-learn divides by the number of classes present; here it is ``K`` (its weights are
    scaled by present / K), so a class without examples changes no other class's weight. When
    every class occurs, the mean weight over the examples is 1 and the loss scale is unchanged.

    Args:
      labels: (N,) integer labels in ``[0, num_classes)``, N >= 1 (integral floats accepted).
      num_classes: K.

    Returns:
      (K,) float32.

    Raises:
      ValueError: ``num_classes`` is not a positive int, or ``labels`` is empty, not 1-D, not
        integral, or outside ``[0, K)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be integer class indices of shape (N,), got {y.shape}")
    if y.size == 0:
        raise ValueError("labels is empty; class weights need at least one example")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, got "
            f"[{y.min()}, {y.max()}]"
        )
    counts = np.bincount(y, minlength=num_classes)
    weights = np.zeros(num_classes, np.float64)
    present = counts > 0
    weights[present] = y.size / (num_classes * counts[present])
    return weights.astype(np.float32)


