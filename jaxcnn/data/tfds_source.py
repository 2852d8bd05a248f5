"""A prepared TFDS data dir (array_record) read into memory as uint8 arrays, without TensorFlow.

The reader is TFDS's own random-access data source (``tensorflow-datasets`` + ``array-record``,
both base dependencies). With TensorFlow installed (``pip install "jaxcnn[prepare]"``), TFDS
downloads and prepares a missing dataset first, as array_record, so the same reader serves it.
A shard that cannot be read (truncated, garbled, missing) is a :class:`DamagedDataError` that
names the file. :func:`jaxcnn.data.load_tfds` decides when this source is used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import ArrayDataset, resize_images
from jaxcnn.data.errors import (
    DamagedDataError,
    DataNotFoundError,
    empty_split_message,
    not_found,
)
from jaxcnn.data.splits import split_names

CHUNK_SIZE = 1024
# What array_record (Riegeli) and TFDS's decoders raise for a damaged or missing shard:
# RuntimeError from the record reader, OSError (PIL's UnidentifiedImageError) from the decoder.
_READ_ERRORS = (RuntimeError, OSError)


def tensorflow_available() -> bool:
    """Whether TensorFlow imports (then TFDS can prepare datasets itself)."""
    import importlib.util

    try:
        if importlib.util.find_spec("tensorflow") is None:
            return False
        import tensorflow  # noqa: F401
    except Exception:  # a missing or broken install both mean: TFDS cannot prepare
        return False
    return True


@contextlib.contextmanager
def _quiet_absl():
    """Silence TFDS's absl warnings (e.g. "OpenCV is not installed") during a load."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl comes with tensorflow-datasets
        yield
        return
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def open_builder(name: str, data_dir: Path):
    """``(builder, prepared)``: TFDS's array_record builder of ``name`` in ``data_dir`` and
    whether a prepared copy is there.

    Raises:
      ValueError: an unknown dataset name.
    """
    import tensorflow_datasets as tfds

    with _quiet_absl():
        try:
            builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"unknown TFDS dataset name {name!r}; image datasets that work here include "
                "'cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'tf_flowers'"
            ) from None
        return builder, builder.is_prepared()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _download_hint(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] in ("tensorflow", "tf"):
            return 'TensorFlow is needed to prepare this dataset: pip install "jaxcnn[prepare]"'
        return f"a module TFDS needs to prepare this dataset is missing: pip install {missing}"
    if isinstance(exc, ImportError):
        return 'preparing needs TensorFlow and its extras: pip install "jaxcnn[prepare]"'
    text = str(exc).lower()
    network_words = ("connection", "resolve", "network", "timed out", "timeout", "unreachable",
                     "name or service", "urlopen", "ssl", "http")
    if isinstance(exc, ConnectionError | TimeoutError) or any(w in text for w in network_words):
        return "no network? downloading needs internet access"
    return ""


def _features_keys(builder) -> tuple[str, str]:
    keys = getattr(builder.info, "supervised_keys", None)
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    return "image", "label"


def load_builder(builder, prepared: bool, name: str, split: str, data_dir: Path,
                 download: bool, image_size: tuple[int, int] | None,
                 progress: bool) -> ArrayDataset:
    """Split ``split`` of ``builder`` (from :func:`open_builder`) in memory; an unprepared one is
    prepared first by TFDS when ``download`` allows (that needs TensorFlow).

    Raises:
      DataNotFoundError: not prepared and preparing was disabled or failed, not array_record,
        or no such split.
      DamagedDataError: a shard cannot be read; the message names it.
      ValueError: a split that does not fit or selects no examples, images of different sizes
        without ``image_size``.
    """
    with _quiet_absl():
        if not prepared:
            if not download:
                raise not_found(name, split, data_dir, "Download disabled (download=False).")
            try:
                builder.download_and_prepare(file_format="array_record")
            except Exception as exc:
                hint = _download_hint(exc)
                reason = f"Download failed: {_one_line(exc)}" + (f" ({hint})" if hint else "")
                raise not_found(name, split, data_dir, reason) from None
        source = _data_source(builder, name, split, data_dir)
        files = [(os.fspath(f.filename), f.take)
                 for f in builder.info.splits[split].file_instructions]
        image_key, label_key = _features_keys(builder)
        class_names = tuple(getattr(builder.info.features[label_key], "names", None) or ())

        def read(idx: range) -> list:
            return _read_records(source, idx, files, name, builder.data_dir)

        return _to_arrays(len(source), read, name, split, image_key, label_key, class_names,
                          image_size, progress)


def _data_source(builder, name: str, split: str, data_dir: Path):
    available = list(builder.info.splits.keys())
    try:
        return builder.as_data_source(split=split)
    except NotImplementedError as exc:
        raise not_found(
            name, split, data_dir,
            f"The prepared copy in {builder.data_dir} is not in array_record format "
            f"({_one_line(exc)}); prepare it again with file_format='array_record' or point "
            "--data-dir at another copy.",
        ) from None
    except (ValueError, KeyError) as exc:
        message = str(exc)
        if "Unknown split" in message or any(
            n not in available and n != "all" for n in split_names(split)
        ):
            raise DataNotFoundError(
                f"TFDS dataset {name!r} in {builder.data_dir} has no split {split!r}: available "
                f"splits are {available}. Use one of them (e.g. 'train[:45000]' / "
                "'train[45000:]' to hold out part of train), or pass --data-dir / "
                "TFDS_DATA_DIR pointing at a copy that includes it."
            ) from None
        sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
        try:
            selected = builder.info.splits[split].num_examples
        except (ValueError, KeyError):
            selected = None
        if selected == 0:  # TFDS refuses an empty selection with a message about paths
            raise ValueError(empty_split_message(
                split, name, ", ".join(f"{k!r}: {n:,}" for k, n in sizes.items()))) from None
        raise ValueError(
            f"split {split!r} does not fit {name!r} in {builder.data_dir} (examples per split: "
            f"{sizes}): {message.splitlines()[0] if message else type(exc).__name__}"
        ) from None


def _get(source, keys: Sequence[int]) -> list:
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(keys)) if getitems is not None else [source[i] for i in keys]


def _read_records(source, idx: range, files: list[tuple[str, int]], name: str,
                  folder) -> list:
    """Decoded records ``idx`` of ``source``, whose examples are the ``(shard file, count)``
    runs of ``files`` in order.

    Raises:
      DamagedDataError: a shard cannot be read: the message names it (each shard that holds
        part of ``idx`` is read again alone to find which) and how to replace it.
    """
    try:
        return _get(source, idx)
    except _READ_ERRORS as exc:
        runs, offset = {}, 0
        for filename, count in files:
            keys = range(max(idx.start, offset), min(idx.stop, offset + count))
            if keys:
                runs.setdefault(filename, []).extend(keys)
            offset += count
        bad = []
        for filename, keys in runs.items():
            try:
                _get(source, keys)
            except _READ_ERRORS:
                bad.append(filename)
        named = ", ".join(bad or runs)  # not reproduced alone: name every shard of the chunk
        raise DamagedDataError(
            f"cannot read {named} ({_one_line(exc)}): this shard of the prepared TFDS dataset "
            f"{name!r} is damaged (truncated or garbled) or missing. Fix: delete {folder} and "
            "run again with download enabled, so the dataset is prepared or downloaded afresh "
            "(or copy an intact prepared copy there, or pass --data-dir DIR with another copy)."
        ) from None


def _to_arrays(n: int, read: Callable[[range], list], name: str, split: str, image_key: str,
               label_key: str, class_names: tuple[str, ...],
               image_size: tuple[int, int] | None, progress: bool) -> ArrayDataset:
    """The ``n`` records that ``read(range)`` returns, in chunks, as one :class:`ArrayDataset`
    with images (N, H, W, C) uint8 (resized to ``image_size`` if given) and labels (N,)."""
    from tqdm.auto import tqdm

    images: np.ndarray | None = None
    labels = np.empty(n, np.int32)
    with tqdm(total=n, desc=f"loading {name} {split}", unit="img", disable=not progress,
              leave=False) as bar:
        for start in range(0, n, CHUNK_SIZE):
            records = read(range(start, min(start + CHUNK_SIZE, n)))
            chunk = [np.asarray(r[image_key]) for r in records]
            labels[start : start + len(records)] = [int(r[label_key]) for r in records]
            if image_size is not None:
                arr = resize_images(chunk, image_size)
            else:
                shapes = {c.shape for c in chunk}
                if images is not None:
                    shapes.add(images.shape[1:])
                if len(shapes) > 1:
                    a, b = sorted(shapes)[:2]
                    raise ValueError(
                        f"images of {name!r} differ in size (e.g. {a} and {b}); pass "
                        "image_size=(height, width) to resize them all"
                    )
                arr = np.stack(chunk)
                if arr.dtype != np.uint8:
                    raise ValueError(f"images of {name!r} are {arr.dtype}, expected uint8")
            if arr.ndim == 3:
                arr = arr[..., None]
            if images is None:
                images = np.empty((n, *arr.shape[1:]), np.uint8)
            images[start : start + len(records)] = arr
            bar.update(len(records))
    if images is None:  # empty split
        h, w = image_size if image_size is not None else (0, 0)
        images = np.zeros((0, h, w, 1), np.uint8)
    if not class_names:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1 if n else 1))
    return ArrayDataset(images, labels, class_names)
