"""Load TensorFlow-Datasets image datasets into memory as uint8 arrays, without TensorFlow.

Where the data comes from, in order:

1. the ``.npz`` cache of an earlier load (see :func:`load_tfds`): well under a second for
   CIFAR-10;
2. a prepared TFDS data dir (array_record), read through ``tfds`` random-access data sources,
   which need no TensorFlow (``tensorflow-datasets`` + ``array-record``, both base
   dependencies);
3. if the data dir holds no prepared copy:

   * with TensorFlow installed (``pip install "jaxcnn[prepare]"``), TFDS downloads and prepares
     it (as array_record, so the same reader serves it) -- TFDS's own pipeline stays the first
     choice;
   * without TensorFlow, for ``cifar10`` and ``tf_flowers``, jaxcnn downloads the official
     archive itself (sha256-checked, atomic, kept in ``<data_dir>/downloads/``) and decodes it
     with numpy/PIL (:mod:`jaxcnn.data.official`). Its example order is the archive's
     (CIFAR-10: data_batch_1..5, then test_batch), which differs from the shuffled order of a
     TFDS-prepared copy: the same slice, e.g. 'train[:45000]', selects different images;
   * other datasets need TensorFlow to be prepared; the error says so.

Both sources give the same uint8 :class:`ArrayDataset` (TFDS's label ids and class names) and
cache it; the cache is keyed by source, so the two never share an entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import ArrayDataset, resize_images

CHUNK_SIZE = 1024
_CACHE_FORMAT = 2
SPLIT_SYNTAX = (
    "'NAME' or 'NAME[FROM:TO]' with FROM/TO integers (negative: from the end) or percentages, "
    "several joined with '+', e.g. 'train', 'train[:45000]', 'train[45000:]', 'train[:10%]'"
)


class DataNotFoundError(FileNotFoundError):
    """The requested dataset/split is not prepared in the data dir and could not be downloaded."""


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


def default_data_dir() -> Path:
    """``$TFDS_DATA_DIR`` if set, else TFDS's default ``~/tensorflow_datasets``."""
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path("~/tensorflow_datasets").expanduser()


def _sanitise(text: str) -> str:
    text = text.replace("%", "pct").replace("[", "_").replace("]", "").replace(":", "-")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def _cache_roots(data_dir: Path) -> list[Path]:
    """Where caches may live, in order of preference."""
    roots = []
    env = os.environ.get("JAXCNN_CACHE_DIR")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(data_dir / "jaxcnn_cache")
    roots.append(Path("~/.cache/jaxcnn").expanduser())
    return roots


def _cache_relpath(name: str, split: str, image_size: tuple[int, int] | None,
                   source: str = "tfds") -> Path:
    """``<name>/<source>/<split>[_HxW].npz``; source is "tfds" or "official"."""
    stem = _sanitise(split)
    if image_size is not None:
        stem += f"_{image_size[0]}x{image_size[1]}"
    return Path(_sanitise(name)) / source / f"{stem}.npz"


def _cache_meta(source: str, name: str, split: str, image_size, **identity) -> dict:
    """Meta of a cache entry. ``identity`` names what identifies the data of ``source``: the
    data dir for ``"tfds"`` (``data_dir=``), the archive's checksum for ``"official"``
    (``archive_sha256=``)."""
    return {
        "format": _CACHE_FORMAT,
        "source": source,
        "name": name,
        "split": split,
        **identity,
        "image_size": list(image_size) if image_size is not None else None,
    }


def _read_cache(path: Path, meta: dict) -> ArrayDataset | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            if stored != meta:  # same name and split, but from another data dir or size
                return None
            return ArrayDataset(z["images"], z["labels"], tuple(str(c) for c in z["class_names"]))
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt or foreign file never stops a load
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=3)
        return None


def _write_cache(roots: list[Path], rel: Path, ds: ArrayDataset, meta: dict) -> Path | None:
    """Write atomically to the first writable root; return the path or None."""
    for root in roots:
        path = root / rel
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    images=ds.images,
                    labels=ds.labels,
                    class_names=np.array(ds.class_names, dtype=str),
                    meta=np.array(json.dumps(meta)),
                )
            os.replace(tmp_name, path)
            return path
        except OSError:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
            continue
    warnings.warn(f"could not write a cache for {rel} in any of {roots}", stacklevel=3)
    return None


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


def _not_found(name: str, split: str, data_dir: Path, reason: str,
               other_way: str | None = None) -> DataNotFoundError:
    other_way = other_way or (
        "or run with download enabled on a machine with internet (preparing needs TensorFlow: "
        'pip install "jaxcnn[prepare]").'
    )
    return DataNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) was not found: searched data dir {data_dir} "
        f"(expected a prepared copy in {data_dir / name}/<version>/).\n"
        f"{reason}\n"
        "Fix: pass the TFDS data dir that holds a prepared copy with --data-dir DIR (Python: "
        f"data_dir=DIR) or set TFDS_DATA_DIR=DIR; {other_way}"
    )


def _tensorflow_available() -> bool:
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


def _builder(name: str, data_dir: Path):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown TFDS dataset name {name!r}; image datasets that work here include "
            "'cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'tf_flowers'"
        ) from None


def _features_keys(builder) -> tuple[str, str]:
    keys = getattr(builder.info, "supervised_keys", None)
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    return "image", "label"


def load_tfds(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache: bool = True,
    image_size: tuple[int, int] | int | None = None,
    progress: bool = True,
) -> ArrayDataset:
    """Load a TFDS image classification dataset into memory.

    A prepared copy in ``data_dir`` is read with TFDS (no TensorFlow needed). Without one,
    TFDS prepares it if TensorFlow is installed; if not, ``cifar10`` and ``tf_flowers`` come
    from their official archives, which jaxcnn downloads (sha256-checked, into
    ``<data_dir>/downloads/``; overridable with ``JAXCNN_CIFAR10_URL`` / ``_SHA256`` and
    ``JAXCNN_TF_FLOWERS_URL`` / ``_SHA256``; stall timeout ``$JAXCNN_DOWNLOAD_TIMEOUT``, 30 s)
    and decodes itself (:mod:`jaxcnn.data.official`). That path keeps the archive's order
    (CIFAR-10: data_batch_1..5, then test_batch), not TFDS's shuffled order, so a slice such as
    'train[:45000]' holds other images than on a TFDS-prepared copy; labels and class names
    are TFDS's.

    Args:
      name: TFDS name: "cifar10", "mnist", "fashion_mnist", "tf_flowers", ... (optionally with
        a version, "cifar10:3.0.2").
      split: a TFDS split string: "train", "test", "train[:45000]", "train[45000:]",
        "train[:10%]", "train[:100]+test". Checked before anything is read or downloaded.
      data_dir: the TFDS data dir (the folder that CONTAINS ``<name>/<version>/``); defaults to
        ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``. Passing ``<data_dir>/<name>`` itself
        also works.
      download: fetch the data when the data dir lacks it (TFDS prepare, or the official
        archive). False never touches the network, but an archive already in a downloads
        folder is still used.
      cache: reuse / write the decoded arrays as ``<root>/<name>/<source>/<split>[_HxW].npz``
        (uncompressed, written atomically; source "tfds" or "official", and the source is in the
        entry's metadata too, so the two never share an entry) where root is
        ``$JAXCNN_CACHE_DIR`` if set, else ``<data_dir>/jaxcnn_cache`` if writable, else
        ``~/.cache/jaxcnn``. A cache that cannot be written never makes the load fail.
      image_size: (height, width) to resize every image to (PIL bilinear, antialiased); needed
        for datasets whose images differ in size (tf_flowers). None keeps the stored size.
      progress: show tqdm progress bars while downloading and decoding.

    Returns:
      :class:`ArrayDataset` with images (N, H, W, C) uint8, labels (N,) int32 and the class
      names in label order.

    Raises:
      DataNotFoundError: the dataset or split is not in the data dir and downloading was disabled
        or failed (network, checksum, truncation); the message says where it looked, what it
        tried and how to fix it.
      ValueError: unknown dataset name, malformed split string, images of different sizes
        without ``image_size``, or a URL override without its checksum.
    """
    from jaxcnn.data import official

    parse_split(split)  # a malformed split fails here, before any read or download
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if image_size is not None:
        if isinstance(image_size, int | np.integer):
            image_size = (int(image_size), int(image_size))
        image_size = (int(image_size[0]), int(image_size[1]))
    base_name = name.split(":")[0].split("/")[0]

    # A data dir given as <data_dir>/<name> (the dataset's own folder) is accepted too.
    if data_dir.name == base_name and not (data_dir / base_name).exists():
        if any(p.is_dir() and (p / "dataset_info.json").exists() for p in data_dir.glob("*")):
            data_dir = data_dir.parent

    rel = _cache_relpath(name, split, image_size)
    meta = _cache_meta("tfds", name, split, image_size, data_dir=str(data_dir.resolve()))
    roots = _cache_roots(data_dir)
    if cache:
        for root in roots:
            hit = _read_cache(root / rel, meta)
            if hit is not None:
                return hit

    def from_official():
        return _load_official(base_name, split, data_dir, download, cache, image_size,
                              progress, roots)

    has_official = base_name in official.SUPPORTED
    # Cheap first: no folder for the dataset at all means nothing is prepared.
    if has_official and not (data_dir / base_name).exists() and not _tensorflow_available():
        return from_official()
    with _quiet_absl():
        builder = _builder(name, data_dir)
        prepared = builder.is_prepared()
    if not prepared and has_official and not _tensorflow_available():
        return from_official()
    with _quiet_absl():
        ds = _load_from_tfds(builder, prepared, name, split, data_dir, download, image_size,
                             progress)
    if cache:
        _write_cache(roots, rel, ds, meta)
    return ds


def _load_official(name, split, data_dir, download, cache, image_size, progress, roots):
    """cifar10 / tf_flowers from the official archive (cached like the TFDS path)."""
    from jaxcnn.data import official

    arc = official.archive(name)
    official.check_request(arc, split, image_size)  # before any download
    rel = _cache_relpath(name, split, image_size, source="official")
    meta = _cache_meta("official", name, split, image_size, archive_sha256=arc.sha256)
    if cache:
        for root in roots:
            hit = _read_cache(root / rel, meta)
            if hit is not None:
                return hit
    path = official.fetch_archive(arc, data_dir, split=split, download_missing=download,
                                  progress=progress)
    if path is None:
        folder = official.downloads_dirs(data_dir)[0]
        raise _not_found(
            name, split, data_dir,
            f"Download disabled (download=False), and no {arc.filename} in {folder}/.",
            other_way=f"or place {arc.filename} (sha256 {arc.sha256}) in {folder}/; or run "
            "with download enabled on a machine with internet (jaxcnn then downloads the "
            f"official archive from {arc.url} itself; no TensorFlow needed).",
        )
    ds = official.load_archive(arc, path, split, image_size=image_size, progress=progress)
    if cache:
        _write_cache(roots, rel, ds, meta)
    return ds


def _load_from_tfds(builder, prepared, name, split, data_dir, download, image_size, progress):
    if not prepared:
        if not download:
            raise _not_found(name, split, data_dir, "Download disabled (download=False).")
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as exc:
            hint = _download_hint(exc)
            reason = f"Download failed: {_one_line(exc)}" + (f" ({hint})" if hint else "")
            raise _not_found(name, split, data_dir, reason) from None

    available = list(builder.info.splits.keys())
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError as exc:
        raise _not_found(
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
        raise ValueError(
            f"split {split!r} does not fit {name!r} in {builder.data_dir} (examples per split: "
            f"{sizes}): {message.splitlines()[0] if message else type(exc).__name__}"
        ) from None

    image_key, label_key = _features_keys(builder)
    label_feature = builder.info.features[label_key]
    class_names = tuple(getattr(label_feature, "names", None) or ())
    return _read_source(source, name, split, image_key, label_key, class_names, image_size,
                        progress)


def _read_source(source, name, split, image_key, label_key, class_names, image_size, progress):
    from tqdm.auto import tqdm

    n = len(source)
    images: np.ndarray | None = None
    labels = np.empty(n, np.int32)
    getitems = getattr(source, "__getitems__", None)
    with tqdm(total=n, desc=f"loading {name} {split}", unit="img", disable=not progress,
              leave=False) as bar:
        for start in range(0, n, CHUNK_SIZE):
            idx = list(range(start, min(start + CHUNK_SIZE, n)))
            records = getitems(idx) if getitems is not None else [source[i] for i in idx]
            chunk = [np.asarray(r[image_key]) for r in records]
            labels[start : start + len(idx)] = [int(r[label_key]) for r in records]
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
            images[start : start + len(idx)] = arr
            bar.update(len(idx))
    if images is None:  # empty split
        h, w = image_size if image_size is not None else (0, 0)
        images = np.zeros((0, h, w, 1), np.uint8)
    if not class_names:
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1 if n else 1))
    return ArrayDataset(images, labels, class_names)

