"""TFDS loading: real CIFAR-10 (skips without ../shared/data), the npz cache, clear errors.

The download path without TensorFlow (official archives) is tested in tests/test_download.py.
"""

import time

import numpy as np
import pytest

import jaxcnn.data.tfds_source as tfds_source
from jaxcnn.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayDataset,
    DataNotFoundError,
    channel_stats,
    load_tfds,
    official,
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@pytest.fixture
def tfds_dir(cifar10_data_dir):
    return cifar10_data_dir.parent  # the TFDS data_dir is the folder above <name>/


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(path))
    return path


def test_load_cifar10_slice_and_cache(tfds_dir, cache_dir, monkeypatch):
    t0 = time.perf_counter()
    ds = load_tfds("cifar10", "train[:500]", data_dir=tfds_dir, progress=False)
    first = time.perf_counter() - t0
    assert ds.images.shape == (500, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (500,) and ds.labels.dtype == np.int32
    assert ds.labels.min() >= 0 and ds.labels.max() <= 9 and len(np.unique(ds.labels)) == 10
    assert ds.class_names == CIFAR10_CLASSES
    assert ds.images.std() > 30  # real pictures, not blanks

    cached = cache_dir / "cifar10" / "tfds" / "train_-500.npz"
    assert cached.exists()
    assert not list(cache_dir.rglob("*.tmp"))

    # The second load must come from the cache: TFDS may not be touched at all.
    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS was called although a cache exists")

    monkeypatch.setattr(tfds_source, "open_builder", no_tfds)
    t0 = time.perf_counter()
    again = load_tfds("cifar10", "train[:500]", data_dir=tfds_dir)
    second = time.perf_counter() - t0
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.class_names == ds.class_names
    assert second < first

    # Another split is a different cache entry (so it reaches TFDS, which is patched out here).
    with pytest.raises(AssertionError, match="TFDS was called"):
        load_tfds("cifar10", "train[500:600]", data_dir=tfds_dir)


def test_split_strings_and_dataset_dir_accepted(tfds_dir, cifar10_data_dir):
    a = load_tfds("cifar10", "train[:1%]", data_dir=tfds_dir, cache=False, progress=False)
    assert len(a) == 500
    # Passing <data_dir>/cifar10 itself works too, and slices agree with each other.
    b = load_tfds("cifar10", "train[400:500]", data_dir=cifar10_data_dir, cache=False,
                  progress=False)
    np.testing.assert_array_equal(b.images, a.images[400:500])
    np.testing.assert_array_equal(b.labels, a.labels[400:500])


def test_resize_on_load(tfds_dir):
    ds = load_tfds("cifar10", "train[:8]", data_dir=tfds_dir, cache=False, image_size=(16, 20),
                   progress=False)
    assert ds.images.shape == (8, 16, 20, 3) and ds.images.dtype == np.uint8


def test_cifar10_constants_match_a_real_subset(tfds_dir, cache_dir):
    ds = load_tfds("cifar10", "train[:5000]", data_dir=tfds_dir, progress=False)
    mean, std = channel_stats(ds.images)
    # 5,000 of the 50,000 images: within 0.002 of the full-set values.
    np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=2e-3)
    np.testing.assert_allclose(std, CIFAR10_STD, atol=2e-3)


@pytest.mark.slow
def test_cifar10_constants_match_real_train_split(tfds_dir):
    # Full split (about 20-30 s to decode on 2 busy cores; cached afterwards in the default cache).
    ds = load_tfds("cifar10", "train", data_dir=tfds_dir, progress=False)
    assert len(ds) == 50_000
    np.testing.assert_array_equal(ds.class_counts(), [5000] * 10)
    mean, std = channel_stats(ds.images)
    np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=1e-4)
    np.testing.assert_allclose(std, CIFAR10_STD, atol=1e-4)


def test_missing_split_lists_available(tfds_dir, cache_dir):
    with pytest.raises(DataNotFoundError) as err:
        load_tfds("cifar10", "test", data_dir=tfds_dir)
    msg = str(err.value)
    assert "'test'" in msg and "available splits are ['train']" in msg
    assert "--data-dir" in msg and "TFDS_DATA_DIR" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert isinstance(err.value, FileNotFoundError)


def test_missing_data_with_download_disabled(tmp_path, cache_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_tfds("cifar10", "train[:10]", data_dir=empty, download=False)
    msg = str(err.value)
    assert "'cifar10'" in msg and "'train[:10]'" in msg
    assert str(empty) in msg
    assert "download=False" in msg
    assert "--data-dir" in msg and "TFDS_DATA_DIR" in msg
    assert err.value.__cause__ is None and err.value.__context__ is None  # no chained trace
    assert list(empty.iterdir()) == []  # nothing written into the searched dir


def test_failed_download_reports_reason(tmp_path, cache_dir, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_tfds("mnist", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert "Download failed" in msg and "No module named 'tensorflow'" in msg
    assert 'pip install "jaxcnn[prepare]"' in msg and str(tmp_path) in msg


def test_env_data_dir_and_unknown_name(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_tfds("mnist", "train", download=False)
    with pytest.raises(ValueError, match="unknown TFDS dataset name 'not_a_dataset'"):
        load_tfds("not_a_dataset", download=False)


@pytest.mark.parametrize("split", ["train[:500", "train[500]", "train[:200%]", "train[1.5:]",
                                   "", "train[::2]", "train[:10%", "all[:5]"])
def test_malformed_split_is_one_line_before_anything(split, tmp_path, cache_dir):
    with pytest.raises(ValueError) as err:
        load_tfds("cifar10", split, data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and "'train[:45000]'" in msg and "'train[:10%]'" in msg
    assert err.value.__cause__ is None
    assert not (tmp_path / "nowhere").exists()  # nothing read, written or downloaded


@pytest.mark.parametrize("split,n,expected", [
    ("train", 30, (0, 30)),
    ("train[:10%]", 30, (0, 3)),
    ("train[:33%]", 30, (0, 10)),      # closest: 9.9 -> 10
    ("train[:25%]", 30, (0, 8)),       # 7.5 -> 8 (round half to even)
    ("train[:35%]", 30, (0, 10)),      # 10.5 -> 10 (round half to even)
    ("train[45%:]", 30, (14, 30)),     # 13.5 -> 14
    ("train[-5:]", 30, (25, 30)),
    ("train[:-5%]", 40, (0, 38)),
    ("train[7:12]", 30, (7, 12)),
])
def test_official_slices_follow_tfds(split, n, expected):
    """Percent and negative boundaries as TFDS computes them (its own parser and rounding)."""
    import tensorflow_datasets as tfds

    labels = np.arange(n) % 10
    whole = {"train": ArrayDataset(np.zeros((n, 1, 1, 1), np.uint8), labels, CIFAR10_CLASSES)}
    got = official.select(split, whole, "cifar10")
    np.testing.assert_array_equal(got.labels, labels[slice(*expected)])

    class Info:
        num_examples = n
        shard_lengths = [n]

    (absolute,) = tfds.core.ReadInstruction.from_spec(split).to_absolute({"train": Info()})
    assert labels[absolute.from_:absolute.to].tolist() == got.labels.tolist()
