"""Load TensorFlow-Datasets image datasets into memory as uint8 arrays, without TensorFlow.

:func:`load_tfds` picks the source; where the data comes from, in order:

1. the ``.npz`` cache of an earlier load (:mod:`~jaxcnn.data.npz_cache`): well under a second
   for CIFAR-10;
2. a prepared TFDS data dir (array_record), read by :mod:`~jaxcnn.data.tfds_source`;
3. if the data dir holds no prepared copy:

   * with TensorFlow installed (``pip install "jaxcnn[prepare]"``), TFDS downloads and prepares
     it (as array_record, so the same reader serves it) -- TFDS's own pipeline stays the first
     choice;
   * without TensorFlow, for ``cifar10`` and ``tf_flowers``, jaxcnn downloads the official
     archive itself (sha256-checked, atomic, kept in ``<data_dir>/downloads/``) and decodes it
     with numpy/PIL (:mod:`~jaxcnn.data.official`). Its example order is the archive's
     (CIFAR-10: data_batch_1..5, then test_batch), which differs from the shuffled order of a
     TFDS-prepared copy: the same slice, e.g. 'train[:45000]', selects different images;
   * other datasets need TensorFlow to be prepared; the error says so.

Both sources give the same uint8 :class:`ArrayDataset` (TFDS's label ids and class names) and
cache it; the cache is keyed by source, so the two never share an entry.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxcnn.data import npz_cache, official, tfds_source
from jaxcnn.data.dataset import ArrayDataset
from jaxcnn.data.errors import not_found
from jaxcnn.data.splits import parse_split


def default_data_dir() -> Path:
    """``$TFDS_DATA_DIR`` if set, else TFDS's default ``~/tensorflow_datasets``."""
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path("~/tensorflow_datasets").expanduser()


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
      DamagedDataError: a shard of the prepared copy cannot be read (a ``ValueError``); the
        message names the file and how to prepare or download the dataset afresh.
      ValueError: unknown dataset name, malformed split string or one that selects no
        examples, images of different sizes without ``image_size``, or a URL override without
        its checksum.
    """
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

    roots = npz_cache.roots(data_dir)
    rel = npz_cache.relpath(name, split, image_size)
    meta = npz_cache.meta("tfds", name, split, image_size, data_dir=str(data_dir.resolve()))
    if cache and (hit := npz_cache.lookup(roots, rel, meta)) is not None:
        return hit

    def from_official():
        return _load_official(base_name, split, data_dir, download, cache, image_size,
                              progress, roots)

    has_official = base_name in official.SUPPORTED
    # Cheap first: no folder for the dataset at all means nothing is prepared.
    if (has_official and not (data_dir / base_name).exists()
            and not tfds_source.tensorflow_available()):
        return from_official()
    builder, prepared = tfds_source.open_builder(name, data_dir)
    if not prepared and has_official and not tfds_source.tensorflow_available():
        return from_official()
    ds = tfds_source.load_builder(builder, prepared, name, split, data_dir, download,
                                  image_size, progress)
    if cache:
        npz_cache.write(roots, rel, ds, meta)
    return ds


def _load_official(name, split, data_dir, download, cache, image_size, progress, roots):
    """cifar10 / tf_flowers from the official archive (cached like the TFDS path)."""
    arc = official.archive(name)
    official.check_request(arc, split, image_size)  # before any download
    rel = npz_cache.relpath(name, split, image_size, source="official")
    meta = npz_cache.meta("official", name, split, image_size, archive_sha256=arc.sha256)
    if cache and (hit := npz_cache.lookup(roots, rel, meta)) is not None:
        return hit
    path = official.fetch_archive(arc, data_dir, split=split, download_missing=download,
                                  progress=progress)
    if path is None:
        folder = official.downloads_dirs(data_dir)[0]
        raise not_found(
            name, split, data_dir,
            f"Download disabled (download=False), and no {arc.filename} in {folder}/.",
            other_way=f"or place {arc.filename} (sha256 {arc.sha256}) in {folder}/; or run "
            "with download enabled on a machine with internet (jaxcnn then downloads the "
            f"official archive from {arc.url} itself; no TensorFlow needed).",
        )
    ds = official.load_archive(arc, path, split, image_size=image_size, progress=progress)
    if cache:
        npz_cache.write(roots, rel, ds, meta)
    return ds
