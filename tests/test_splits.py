"""jaxcnn.data.splits.stratified_split: stratified, disjoint, deterministic, both sides."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcnn.data import ArrayDataset
from jaxcnn.data.splits import stratified_split


def _labels(counts):
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int32)


def test_disjoint_cover_sorted_and_exact_size():
    labels = _labels([50, 30, 20])
    first, rest = stratified_split(labels, 0.2, seed=1)
    assert len(first) == 20 and len(rest) == 80
    assert first.dtype == np.int64 and rest.dtype == np.int64
    assert np.intersect1d(first, rest).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([first, rest])), np.arange(100))
    assert (np.diff(first) > 0).all() and (np.diff(rest) > 0).all()
    first, rest = stratified_split(labels, 7, seed=1)  # a count
    assert len(first) == 7 and len(rest) == 93


def test_stratified_shares():
    labels = _labels([500, 300, 200])
    first, _ = stratified_split(labels, 0.15, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[first]), [75, 45, 30])


def test_deterministic_per_seed():
    labels = _labels([40, 25, 35])
    a = stratified_split(labels, 0.3, seed=3)
    b = stratified_split(labels, 0.3, seed=3)
    c = stratified_split(labels, 0.3, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_every_class_on_both_sides_when_possible():
    # 15% of 60 is 9: the quotas alone hold out nothing of the 2- and 3-image classes.
    labels = _labels([40, 10, 5, 3, 2])
    first, rest = stratified_split(labels, 0.15, seed=0)
    assert len(first) == 9
    assert (np.bincount(labels[first], minlength=5) >= 1).all()
    assert (np.bincount(labels[rest], minlength=5) >= 1).all()
    # A large fraction: no class with 2+ images is held out whole.
    first, rest = stratified_split(_labels([2, 2, 30]), 0.9, seed=0)
    assert (np.bincount(_labels([2, 2, 30])[rest], minlength=3) >= 1).all()
    # Impossible (2 held-out images, 3 classes): exact size kept, as many classes as fit.
    labels = _labels([4, 4, 4])
    first, _ = stratified_split(labels, 2, seed=0)
    assert len(first) == 2 and len(np.unique(labels[first])) == 2
    # A class with one image goes to one side only.
    labels = _labels([10, 10, 1])
    first, rest = stratified_split(labels, 0.5, seed=0)
    assert (labels[first] == 2).sum() + (labels[rest] == 2).sum() == 1


def test_matches_arraydataset_split_when_nothing_moves():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, 700).astype(np.int32)
    ds = ArrayDataset(np.arange(700, dtype=np.uint8).reshape(700, 1, 1, 1) % 251, labels,
                      tuple("abcde"))
    for seed in range(3):
        val, _ = ds.split(0.15, seed=seed)
        first, rest = stratified_split(labels, 0.15, seed=seed, num_classes=5)
        np.testing.assert_array_equal(ds.take(first).images, val.images)
        np.testing.assert_array_equal(ds.take(first).labels, val.labels)
        assert len(rest) == 700 - len(val)


@pytest.mark.parametrize("labels, size, match", [
    (np.zeros((2, 2), np.int32), 0.5, "1-D"),
    (np.array([0.0, 1.0]), 0.5, "integers"),
    (np.array([0, -1]), 0.5, "non-negative"),
    (np.array([0, 1]), 1.0, r"\(0, 1\)"),
    (np.array([0, 1]), 3, r"\[0, 2\]"),
    (np.array([0, 1]), True, "fraction"),
])
def test_bad_arguments(labels, size, match):
    with pytest.raises(ValueError, match=match):
        stratified_split(labels, size)
    with pytest.raises(ValueError, match="num_classes"):
        stratified_split(np.array([0, 3]), 0.5, num_classes=2)
