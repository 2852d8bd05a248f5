"""Datasets in host memory (uint8), on-device augmentation, and batching.

* :class:`ArrayDataset` -- images (N, H, W, C) uint8, labels (N,) int32, class names.
* :func:`load_tfds` -- a TFDS dataset/split into an ArrayDataset (no TensorFlow needed to read a
  prepared array_record data dir); :class:`DataNotFoundError` when it is missing.
* :mod:`~jaxcnn.data.augment` -- jit-compiled, batched: :func:`normalize`, :func:`random_crop`,
  :func:`random_flip`, :func:`cutout`, :func:`augment`.
* :mod:`~jaxcnn.data.batching` -- :func:`epoch_batches` (deterministic shuffles, per-process
  slices), :func:`pad_batch`, :func:`prefetch`.
"""

from jaxcnn.data.augment import augment, cutout, normalize, random_crop, random_flip
from jaxcnn.data.batching import (
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
from jaxcnn.data.image_folder import load_image_folder, scan_image_folder  # noqa: F401
from jaxcnn.data.tfds_source import DataNotFoundError, load_tfds

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ArrayDataset",
    "DataNotFoundError",
    "augment",
    "channel_stats",
    "cutout",
    "epoch_batches",
    "epoch_permutation",
    "load_tfds",
    "normalize",
    "num_batches",
    "pad_batch",
    "pipeline_images_per_s",
    "prefetch",
    "random_crop",
    "random_flip",
    "resize_images",
]
