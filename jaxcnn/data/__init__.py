"""Datasets in host memory (uint8), on-device augmentation, and batching.

Layers: a module imports only modules listed before it (no circles, no arrows up):

* bottom: :mod:`~jaxcnn.data.errors` (:class:`DataNotFoundError`, :class:`DamagedDataError`),
  :mod:`~jaxcnn.data.splits` (the TFDS split grammar, stratified hold-outs),
  :mod:`~jaxcnn.data.download` (:func:`fetch`: sha256-checked, atomic, cached, failing fast),
  :mod:`~jaxcnn.data.class_balance` (:func:`balanced_class_weights`),
  :mod:`~jaxcnn.data.images` (the one image reader).
* :class:`ArrayDataset` (:mod:`~jaxcnn.data.dataset`) -- images (N, H, W, C) uint8, labels (N,)
  int32, class names; :mod:`~jaxcnn.data.npz_cache`, the cache of decoded datasets.
* sources: :mod:`~jaxcnn.data.tfds_source` (a prepared TFDS array_record dir, no TensorFlow
  needed), :mod:`~jaxcnn.data.official` (cifar10 / tf_flowers from their official archives),
  :mod:`~jaxcnn.data.image_folder` (your own ``PATH/<class>/*.jpg`` folders:
  :func:`scan_image_folder`, :func:`load_image_folder`).
* :func:`load_tfds` (:mod:`~jaxcnn.data.loader`) -- picks the source: cache, prepared TFDS dir,
  TFDS prepare (with TensorFlow), else the official archive.
* :mod:`~jaxcnn.data.augment` -- jit-compiled, batched: :func:`normalize`, :func:`random_crop`,
  :func:`random_flip`, :func:`flip_rows` (mirror by a mask), :func:`cutout`, :func:`augment`.
* :mod:`~jaxcnn.data.batching` -- :func:`epoch_batches` (deterministic shuffles, per-process
  slices, optional alternating flips), :func:`alternating_flip_mask`, :func:`pad_batch`,
  :func:`prefetch`.
"""

from jaxcnn.data.augment import (
    augment,
    cutout,
    flip_rows,
    normalize,
    random_crop,
    random_flip,
)
from jaxcnn.data.batching import (
    alternating_flip_mask,
    epoch_batches,
    epoch_permutation,
    num_batches,
    pad_batch,
    pipeline_images_per_s,
    prefetch,
)
from jaxcnn.data.class_balance import balanced_class_weights
from jaxcnn.data.dataset import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayDataset,
    channel_stats,
    resize_images,
)
from jaxcnn.data.download import ChecksumError, DownloadError, fetch
from jaxcnn.data.errors import DamagedDataError, DataNotFoundError
from jaxcnn.data.image_folder import (
    FolderScan,
    load_image_folder,
    read_image_rgb,
    scan_image_folder,
)
from jaxcnn.data.loader import load_tfds

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ArrayDataset",
    "ChecksumError",
    "DamagedDataError",
    "DataNotFoundError",
    "DownloadError",
    "FolderScan",
    "alternating_flip_mask",
    "augment",
    "balanced_class_weights",
    "channel_stats",
    "cutout",
    "epoch_batches",
    "epoch_permutation",
    "fetch",
    "flip_rows",
    "load_image_folder",
    "load_tfds",
    "normalize",
    "num_batches",
    "pad_batch",
    "pipeline_images_per_s",
    "prefetch",
    "random_crop",
    "random_flip",
    "read_image_rgb",
    "resize_images",
    "scan_image_folder",
]
