"""How a dataset is split: TFDS split strings, and stratified hold-outs on label arrays.

::

    from jaxcnn.data.splits import parse_split, split_names, stratified_split

    parse_split("train[:45000]")              # checked by TFDS's own parser (ValueError if bad)
    split_names("train[:10]+test")            # ['train', 'test']
    val_idx, train_idx = stratified_split(ds.labels, 0.15, seed=0)
    train, val = ds.take(train_idx), ds.take(val_idx)
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["SPLIT_SYNTAX", "parse_split", "split_names", "stratified_split"]

SPLIT_SYNTAX = (
    "'NAME' or 'NAME[FROM:TO]' with FROM/TO integers (negative: from the end) or percentages, "
    "several joined with '+', e.g. 'train', 'train[:45000]', 'train[45000:]', 'train[:10%]'"
)


def parse_split(split: str):
    """Check a TFDS split string with TFDS's own parser (no TensorFlow needed).

    Returns:
      TFDS's split instruction (``tfds.core.ReadInstruction`` or a sum of them).

    Raises:
      ValueError: one line naming the bad string and the expected syntax.
    """
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must be one split string, {SPLIT_SYNTAX}; got {split!r}")
    from tensorflow_datasets.core import splits as tfds_splits

    try:
        return tfds_splits.ReadInstruction.from_spec(split)
    except (ValueError, TypeError, NotImplementedError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[-1].split(". See format at")[0] if lines else type(exc).__name__
        raise ValueError(
            f"bad split string {split!r} ({detail}); expected {SPLIT_SYNTAX}"
        ) from None


def split_names(split: str) -> list[str]:
    """The split names a (valid) split string reads: 'train[:10]+test' -> ['train', 'test']."""
    return [part.split("[")[0].strip() for part in re.split(r"\s*\+\s*", split.strip())]


def _quotas(counts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Examples per class in the first part: ``k`` in all, each class's share as close to its
    share of the data as integers allow (largest remainder, random tie-breaks), then moved so
    that every class with 2+ examples has at least one on each side where ``k`` allows it."""
    n = int(counts.sum())
    quota = k * counts / max(n, 1)
    take = np.floor(quota).astype(np.int64)
    remainder = k - int(take.sum())
    if remainder:
        frac = quota - take + rng.random(len(counts)) * 1e-9
        frac[take >= counts] = -1.0
        take[np.argsort(-frac)[:remainder]] += 1
    # Both sides for every class that has 2+ examples: one example moves at a time from the
    # class that can best spare it (the most on that side), which keeps the total at k.
    eligible = counts >= 2
    while True:
        short = np.flatnonzero(eligible & (take == 0))            # nothing held out
        full = np.flatnonzero(eligible & (take == counts))        # nothing left to train on
        if short.size:
            spare = np.flatnonzero(take > np.where(eligible, 1, 0))
            if not spare.size:
                break
            take[spare[np.argmax(take[spare])]] -= 1
            take[short[0]] += 1
        elif full.size:
            room = np.flatnonzero(take < counts - np.where(eligible, 1, 0))
            if not room.size:
                break
            take[room[np.argmax((counts - take)[room])]] += 1
            take[full[0]] -= 1
        else:
            break
    return take


def stratified_split(labels, size: float | int, *, seed: int = 0,
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split examples into ``(first, rest)`` index arrays, class by class.

    Args:
      labels: (N,) non-negative integer class labels.
      size: the first part's size: a fraction in (0, 1) of N (rounded to the nearest count) or
        a count in [0, N].
      seed: seeds the random choice; the same labels, size and seed give the same split.
      num_classes: K, when classes above the largest label exist (default: largest label + 1).

    Returns:
      ``(first, rest)``: int64 index arrays in increasing order, disjoint, together every index
      once; ``len(first)`` is exactly the requested size. Each class's share of ``first`` is its
      share of the data as closely as integers allow, and every class with at least 2 examples
      has at least one on each side whenever the size leaves room for that (a size smaller
      than the number of such classes cannot). Where no class needs moving, the split equals
      :meth:`jaxcnn.data.ArrayDataset.split`'s for the same seed.

    Raises:
      ValueError: ``labels`` is not a 1-D array of non-negative integers, or ``size`` is out of
        range.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D (N,) array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be non-negative, got {labels.min()}")
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, int | float | np.integer | np.floating):
        raise ValueError(f"size must be a fraction (float) or a count (int), got {size!r}")
    if isinstance(size, float | np.floating):
        if not 0.0 < float(size) < 1.0:
            raise ValueError(f"a fractional size must lie in (0, 1), got {size}")
        k = int(round(float(size) * n))
    else:
        k = int(size)
        if not 0 <= k <= n:
            raise ValueError(f"a count must lie in [0, {n}], got {k}")
    top = int(labels.max()) + 1 if labels.size else 0
    if num_classes is None:
        num_classes = top
    elif num_classes < top:
        raise ValueError(f"num_classes {num_classes} is smaller than the largest label + 1 "
                         f"({top})")
    labels = labels.astype(np.int64, copy=False)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=num_classes)
    take = _quotas(counts, k, rng)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: take[c]]
              for c in range(num_classes)]
    mask = np.zeros(n, dtype=bool)
    if chosen:
        mask[np.concatenate(chosen)] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)
