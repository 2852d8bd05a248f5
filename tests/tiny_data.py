"""Small generated datasets and the tiny model that the training tests share.

Imported like ``fake_archives`` (``from tiny_data import random_dataset, tiny_cnn3``): pytest
puts this folder on ``sys.path``.
"""

from __future__ import annotations

import numpy as np

from jaxcnn import models
from jaxcnn.data import ArrayDataset

CIFAR_CLASSES = tuple(f"class{i}" for i in range(10))


def random_dataset(n: int, seed: int) -> ArrayDataset:
    """``n`` random uint8 8x8 RGB images with random labels of 3 classes ``("a", "b", "c")``."""
    rs = np.random.RandomState(seed)
    images = rs.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    return ArrayDataset(images, rs.randint(0, 3, n), ("a", "b", "c"))


def tiny_cnn3(**options):
    """cnn3 cut down to one conv block of 4 filters and a Dense layer of 8, for 3 classes
    (``options`` go to ``models.create``, e.g. ``dtype``)."""
    return models.create("cnn3", num_classes=3, filters=(4,), dropouts=(0.1,), dense=8,
                         **options)


def tiny_cifar(n: int, seed: int) -> ArrayDataset:
    """``n`` CIFAR-like uint8 32x32 RGB images of 10 classes (:data:`CIFAR_CLASSES`) whose mean
    colour encodes the label, so every model can learn something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    base = (labels[:, None, None, None] * 25).astype(np.float32)
    images = np.clip(base + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return ArrayDataset(images, labels, CIFAR_CLASSES)
