"""A damaged shard of a prepared TFDS dir: one clear error that names the file, no Riegeli trace.

The prepared dir is built here (array_record shards of TFDS-serialized examples, PNG images,
TFDS's dataset_info.json), so no real data and no TensorFlow are needed.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from jaxcnn.data import DamagedDataError, load_tfds

SHARDS = (3, 2)  # examples per shard


def make_prepared_cifar10(data_dir, shards=SHARDS):
    """A prepared ``cifar10`` 3.0.2 train split in ``data_dir``: example ``k`` is a 32x32 image
    filled with value ``k``, label ``k % 10``. Returns the shard paths, in order."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    from PIL import Image
    from tensorflow_datasets.core.example_serializer import ExampleSerializer

    folder = data_dir / "cifar10" / "3.0.2"
    folder.mkdir(parents=True)
    features = tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(num_classes=10),
    })
    serializer = ExampleSerializer(features.get_serialized_info())
    paths, k, num_bytes = [], 0, 0
    for i, count in enumerate(shards):
        path = folder / f"cifar10-train.array_record-{i:05d}-of-{len(shards):05d}"
        writer = ArrayRecordWriter(str(path), "group_size:1")
        for _ in range(count):
            png = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), k, np.uint8)).save(png, format="PNG")
            record = serializer.serialize_example(
                {"id": f"train_{k}".encode(), "image": png.getvalue(), "label": k % 10})
            writer.write(record)
            num_bytes += len(record)
            k += 1
        writer.close()
        paths.append(path)
    info = {
        "name": "cifar10", "version": "3.0.2", "fileFormat": "array_record",
        "moduleName": "tensorflow_datasets.image_classification.cifar",
        "splits": [{"name": "train", "numBytes": str(num_bytes),
                    "shardLengths": [str(n) for n in shards],
                    "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}],
        "supervisedKeys": {"tuple": {"items": [{"featureKey": "image"},
                                               {"featureKey": "label"}]}},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))
    features.save_config(str(folder))
    return paths


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])  # an interrupted copy


def _garble(path):
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # zeros over the first record: its hash no longer matches
    path.write_bytes(bytes(data))


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    return data_dir, make_prepared_cifar10(data_dir)


def test_intact_prepared_dir_loads(prepared):
    data_dir, _ = prepared
    ds = load_tfds("cifar10", "train", data_dir=data_dir, cache=False, progress=False)
    assert ds.images.shape == (5, 32, 32, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], np.arange(5))
    np.testing.assert_array_equal(ds.labels, np.arange(5))


@pytest.mark.parametrize("damage", [_truncate, _garble, _cut_in_half, lambda p: p.unlink()],
                         ids=["truncated", "garbled", "cut_in_half", "missing"])
def test_damaged_shard_is_one_error_naming_the_file(prepared, damage):
    data_dir, (intact, damaged) = prepared
    damage(damaged)
    with pytest.raises(DamagedDataError) as err:
        load_tfds("cifar10", "train", data_dir=data_dir, progress=False)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)  # the CLIs print it as one line
    assert str(damaged) in msg and str(intact) not in msg
    assert f"delete {damaged.parent}" in msg and "download enabled" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not list((data_dir.parent / "cache").rglob("*.npz"))  # nothing cached
    # Examples of the intact shard alone still load.
    ds = load_tfds("cifar10", "train[:3]", data_dir=data_dir, cache=False, progress=False)
    np.testing.assert_array_equal(ds.labels, [0, 1, 2])


def test_only_the_damaged_one_of_the_shards_read_is_named(prepared):
    data_dir, (first, second) = prepared
    _garble(first)  # example 0 only
    with pytest.raises(DamagedDataError, match=str(first)) as err:
        load_tfds("cifar10", "train[3:]+train[:1]", data_dir=data_dir, cache=False,
                  progress=False)
    assert str(second) not in str(err.value)
    ds = load_tfds("cifar10", "train[1:]", data_dir=data_dir, cache=False, progress=False)
    np.testing.assert_array_equal(ds.labels, [1, 2, 3, 4])
