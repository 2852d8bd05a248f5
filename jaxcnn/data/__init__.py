"""Datasets in host memory (uint8), on-device augmentation, and batching.

* :class:`ArrayDataset` -- images (N, H, W, C) uint8, labels (N,) int32, class names.
* :func:`load_tfds` -- a TFDS dataset/split into an ArrayDataset (no TensorFlow needed to read a
  prepared array_record data dir); :class:`DataNotFoundError` when it is missing. Without
  TensorFlow, cifar10 and tf_flowers come from their official archives
  (:mod:`~jaxcnn.data.official`), fetched by :func:`~jaxcnn.data.download.fetch` (sha256-checked,
  atomic, cached, failing fast).
* :mod:`~jaxcnn.data.augment` -- jit-compiled, batched: :func:`normalize`, :func:`random_crop`,
  :func:`random_flip`, :func:`flip_rows` (mirror by a mask), :func:`cutout`, :func:`augment`.
* :mod:`~jaxcnn.data.batching` -- :func:`epoch_batches` (deterministic shuffles, per-process
  slices, optional alternating flips), :func:`alternating_flip_mask`, :func:`pad_batch`,
  :func:`prefetch`.
* :mod:`~jaxcnn.data.image_folder` -- your own ``PATH/<class>/*.jpg`` folders:
  :func:`scan_image_folder` (counts, imbalance, skipped files), :func:`load_image_folder`,
  :func:`class_weights`.
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
from jaxcnn.data.dataset import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayDataset,
    channel_stats,
    resize_images,
)
from jaxcnn.data.download import ChecksumError, DownloadError, fetch
from jaxcnn.data.image_folder import (
    FolderScan,
    class_weights,
    load_image_folder,
    read_image_rgb,
    scan_image_folder,
)
from jaxcnn.data.tfds_source import DataNotFoundError, load_tfds

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ArrayDataset",
    "ChecksumError",
    "DataNotFoundError",
    "DownloadError",
    "FolderScan",
    "alternating_flip_mask",
    "augment",
    "channel_stats",
    "class_weights",
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
