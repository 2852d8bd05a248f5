"""Batching, ArrayDataset and channel statistics on small generated data."""

import threading

import numpy as np
import pytest

from jaxcnn.data import (
    ArrayDataset,
    channel_stats,
    epoch_batches,
    epoch_permutation,
    num_batches,
    pad_batch,
    pipeline_images_per_s,
    prefetch,
    resize_images,
)
from jaxcnn.data.batching import epoch_indices


def make_dataset(n=103, num_classes=4, h=4, w=4):
    images = (np.arange(n * h * w * 3).reshape(n, h, w, 3) % 256).astype(np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # a visible id
    labels = np.arange(n) % num_classes
    return ArrayDataset(images, labels, tuple(f"c{i}" for i in range(num_classes)))


def ids_of(ds, images):
    """Row indices of ``images`` in ``ds`` (rows of make_dataset are unique)."""
    flat = ds.images.reshape(len(ds), -1)
    lookup = {row.tobytes(): i for i, row in enumerate(flat)}
    return np.array([lookup[im.tobytes()] for im in images.reshape(len(images), -1)])


def test_permutation_reproducible_and_different_per_epoch_and_seed():
    p = epoch_permutation(1000, seed=0, epoch=0)
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    np.testing.assert_array_equal(p, epoch_permutation(1000, seed=0, epoch=0))
    assert not np.array_equal(p, epoch_permutation(1000, seed=0, epoch=1))
    assert not np.array_equal(p, epoch_permutation(1000, seed=1, epoch=0))


def test_every_index_once_per_epoch_without_drop():
    ds = make_dataset()
    assert num_batches(103, 10) == 10 and num_batches(103, 10, drop_remainder=False) == 11
    batches = list(epoch_batches(ds, 10, seed=3, epoch=2, drop_remainder=False,
                                 process_index=0, process_count=1))
    assert [len(b[0]) for b in batches] == [10] * 10 + [3]
    ids = np.concatenate([ids_of(ds, im) for im, _ in batches])
    np.testing.assert_array_equal(np.sort(ids), np.arange(103))
    np.testing.assert_array_equal(ids, epoch_permutation(103, 3, 2))
    labels = np.concatenate([lab for _, lab in batches])
    np.testing.assert_array_equal(labels, ds.labels[ids])
    assert batches[0][0].dtype == np.uint8 and batches[0][1].dtype == np.int32
    dropped = list(epoch_batches(ds, 10, process_index=0, process_count=1))
    assert len(dropped) == 10 and all(len(b[1]) == 10 for b in dropped)
    plain = list(epoch_batches(ds, 10, shuffle=False, drop_remainder=False,
                               process_index=0, process_count=1))
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in plain]), ds.labels)


def test_defaults_use_jax_process_info():
    ds = make_dataset()
    assert len(next(iter(epoch_batches(ds, 8)))[0]) == 8  # one process here


@pytest.mark.parametrize("drop", [True, False])
def test_process_slices_are_disjoint_and_cover_the_global_batch(drop):
    ds = make_dataset()
    pc = 4
    global_batches = list(epoch_batches(ds, 16, seed=5, epoch=1, drop_remainder=drop,
                                        process_index=0, process_count=1))
    per_process = [
        list(epoch_batches(ds, 16, seed=5, epoch=1, drop_remainder=drop,
                           process_index=p, process_count=pc))
        for p in range(pc)
    ]
    for b, (g_images, _) in enumerate(global_batches):
        parts = [ids_of(ds, per_process[p][b][0]) for p in range(pc)]
        if len(g_images) == 16:
            assert all(len(part) == 4 for part in parts)
        for p in range(pc):
            for q in range(p + 1, pc):
                assert not set(parts[p]) & set(parts[q])
        # Contiguous slices in process order: their concatenation is the global batch.
        np.testing.assert_array_equal(np.concatenate(parts), ids_of(ds, g_images))
    with pytest.raises(ValueError, match="not divisible by the number of processes 3"):
        next(epoch_batches(ds, 16, process_index=0, process_count=3))


def test_pad_batch_mask():
    images = np.ones((3, 2, 2, 1), np.uint8)
    labels = np.array([1, 2, 3], np.int32)
    pi, pl, mask = pad_batch(images, labels, 5)
    assert pi.shape == (5, 2, 2, 1) and pi.dtype == np.uint8 and pl.dtype == np.int32
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0])
    assert mask.dtype == np.float32
    assert (pi[3:] == 0).all() and (pi[:3] == 1).all()
    np.testing.assert_array_equal(pl, [1, 2, 3, 0, 0])
    _, _, full = pad_batch(images, labels, 3)
    assert full.sum() == 3
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch(images, labels, 2)


def test_prefetch_preserves_order_propagates_errors_and_stops():
    assert list(prefetch(iter(range(20)), size=3)) == list(range(20))

    def failing():
        yield 1
        raise RuntimeError("boom")

    it = prefetch(failing())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(it)

    before = threading.active_count()
    it = prefetch(iter(range(10**9)), size=2)
    assert next(it) == 0
    it.close()
    for t in threading.enumerate():
        if t.name == "jaxcnn-prefetch":
            t.join(timeout=2)
    assert threading.active_count() <= before


def test_array_dataset_validation_and_grayscale():
    gray = ArrayDataset(np.zeros((5, 6, 7), np.uint8), np.arange(5) % 2, ("a", "b"))
    assert gray.images.shape == (5, 6, 7, 1) and gray.image_shape == (6, 7, 1)
    assert gray.labels.dtype == np.int32 and gray.num_classes == 2 and len(gray) == 5
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(np.zeros((5, 6, 7, 3), np.float32), np.zeros(5, int), ("a",))
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset(np.zeros((5, 6, 7, 3), np.uint8), np.zeros(4, int), ("a",))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ArrayDataset(np.zeros((2, 6, 7, 3), np.uint8), np.array([0, 2]), ("a", "b"))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        ArrayDataset(np.zeros((6, 7), np.uint8), np.zeros(6, int), ("a",))


@pytest.mark.parametrize("stratified", [True, False])
def test_split_is_disjoint_sized_and_stratified(stratified):
    ds = make_dataset(100, num_classes=4)
    a, b = ds.split(0.2, seed=1, stratified=stratified)
    assert len(a) == 20 and len(b) == 80
    ids = np.concatenate([ids_of(ds, a.images), ids_of(ds, b.images)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))
    if stratified:
        np.testing.assert_array_equal(a.class_counts(), [5, 5, 5, 5])
    a2, _ = ds.split(0.2, seed=1, stratified=stratified)
    np.testing.assert_array_equal(a.images, a2.images)
    c, _ = ds.split(0.2, seed=2, stratified=stratified)
    assert not np.array_equal(a.images, c.images)
    d, e = ds.split(7, seed=0)
    assert len(d) == 7 and len(e) == 93
    with pytest.raises(ValueError, match="fractional size"):
        ds.split(1.5)
    assert len(ds.take([3, 1])) == 2 and ds.take([3, 1]).labels.tolist() == [3, 1]


def test_resize_images_and_channel_stats():
    rng = np.random.default_rng(0)
    varied = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(20, 30), (8, 8)]]
    out = resize_images(varied, (16, 12))
    assert out.shape == (2, 16, 12, 3) and out.dtype == np.uint8
    flat = np.full((1, 40, 40, 1), 77, np.uint8)
    np.testing.assert_array_equal(resize_images(flat, 10), np.full((1, 10, 10, 1), 77))
    x = rng.integers(0, 256, (50, 5, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(x, chunk_size=7)
    ref = x.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-9)


def test_pipeline_benchmark_runs():
    ds = make_dataset(64, h=8, w=8)
    rate = pipeline_images_per_s(ds, batch_size=16, n_batches=3, warmup=1)
    assert rate > 0


@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_indices_are_the_host_batches(shuffle):
    """The device path's row indices name exactly the host path's batches, in order."""
    ds = make_dataset()
    idx = epoch_indices(len(ds), 10, seed=3, epoch=2, shuffle=shuffle)
    assert idx.shape == (10, 10) and idx.dtype == np.int32
    host = list(epoch_batches(ds, 10, seed=3, epoch=2, shuffle=shuffle,
                              process_index=0, process_count=1))
    assert len(host) == len(idx)
    for rows, (images, labels) in zip(idx, host, strict=True):
        np.testing.assert_array_equal(ds.images[rows], images)
        np.testing.assert_array_equal(ds.labels[rows], labels)
    assert epoch_indices(5, 10).shape == (0, 10)
