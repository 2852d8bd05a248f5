"""In-memory image datasets: uint8 images and int32 labels in host memory.

Small image datasets (CIFAR-10, MNIST, flowers at a fixed size) fit in memory as uint8, so a
dataset here is two numpy arrays and a tuple of class names. Normalisation and augmentation
happen later, on device (see :mod:`jaxcnn.data.augment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxcnn.data.splits import stratified_split

# Per-channel mean and standard deviation of the CIFAR-10 training set, in [0, 1] units (R, G, B).
# The real train split in ../shared/data gives (0.49139968, 0.48215841, 0.44653091) and
# (0.24703223, 0.24348513, 0.26158784) (population std); tests/test_data_tfds.py checks these.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ArrayDataset:
    """Images and labels held in host memory.

    Attributes:
      images: (N, H, W, C) uint8. A grayscale (N, H, W) array gets a channel axis (C = 1).
      labels: (N,) int32 class indices in [0, len(class_names)). Other integer dtypes are cast.
      class_names: one name per class, in label order.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray):
            images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got dtype {images.dtype}; convert floats in "
                "[0, 1] with (x * 255).round().astype(np.uint8)"
            )
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(
                f"images must have shape (N, H, W, C) or (N, H, W), got shape {images.shape}"
            )
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must have shape (N,), got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int32, copy=False)
        if len(labels) != len(images):
            raise ValueError(
                f"images and labels differ in length: {len(images)} images, {len(labels)} labels"
            )
        if isinstance(self.class_names, str):
            raise ValueError("class_names must be a sequence of names, not a single string")
        class_names = tuple(str(c) for c in self.class_names)
        if not class_names:
            raise ValueError("class_names is empty; give one name per class")
        if labels.size:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= len(class_names):
                raise ValueError(
                    f"labels must lie in [0, {len(class_names)}) for {len(class_names)} class "
                    f"names, got values in [{lo}, {hi}]"
                )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> np.ndarray:
        """(num_classes,) int64 number of examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def take(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """The examples at ``indices`` (an integer array or a boolean mask), as a new dataset."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got {idx.shape}")
        elif idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers or a boolean mask, got dtype {idx.dtype}")
        else:
            idx = idx.astype(np.int64, copy=False)
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise ValueError(
                    f"indices out of range for a dataset of {len(self)} examples: "
                    f"min {idx.min()}, max {idx.max()}"
                )
        return ArrayDataset(self.images[idx], self.labels[idx], self.class_names)

    def split(
        self, size: float | int, seed: int = 0, stratified: bool = True
    ) -> tuple[ArrayDataset, ArrayDataset]:
        """Split into ``(first, rest)`` where ``first`` holds ``size`` examples.

        Args:
          size: a fraction in (0, 1) of the examples (a float) or a count in [0, N] (an int).
          seed: seeds the random choice of examples.
          stratified: keep each class's share the same in both parts (as closely as integers
            allow; the total is always exactly the requested size), with every class of 2+
            examples on both sides where the size allows:
            :func:`jaxcnn.data.splits.stratified_split`. Otherwise a uniform random choice.

        Returns:
          ``(first, rest)``, disjoint, covering every example once; both keep the original order.
        """
        if stratified:
            first, rest = stratified_split(
                self.labels, size, seed=seed, num_classes=self.num_classes
            )
        else:  # one class: a uniform choice of ``size`` examples
            first, rest = stratified_split(np.zeros(len(self), np.int64), size, seed=seed)
        return self.take(first), self.take(rest)


def resize_images(
    images: np.ndarray | Sequence[np.ndarray], size: tuple[int, int] | int
) -> np.ndarray:
    """Resize uint8 images with PIL (bilinear, antialiased when shrinking).

    Args:
      images: (N, H, W, C) or (N, H, W) uint8, or a list of (H_i, W_i, C) / (H_i, W_i) uint8
        images of different sizes.
      size: (height, width) of the output, or one int for a square.

    Returns:
      (N, height, width, C) uint8. Images already at ``size`` are copied unchanged.
    """
    from PIL import Image

    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be (height, width) with positive entries, got {size!r}")
    h, w = int(size[0]), int(size[1])
    items = list(images) if not isinstance(images, np.ndarray) else images
    n = len(items)
    if n == 0:
        c = images.shape[-1] if isinstance(images, np.ndarray) and images.ndim == 4 else 1
        return np.zeros((0, h, w, c), np.uint8)
    first = np.asarray(items[0])
    c = first.shape[2] if first.ndim == 3 else 1
    out = np.empty((n, h, w, c), np.uint8)
    for i in range(n):  # host-side preprocessing, once per dataset; not a hot path
        img = np.asarray(items[i])
        if img.dtype != np.uint8:
            raise ValueError(f"resize_images expects uint8 images, image {i} is {img.dtype}")
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        img_c = img.shape[2] if img.ndim == 3 else 1
        if img.ndim not in (2, 3) or img_c != c:
            raise ValueError(
                f"image {i} has shape {img.shape}; expected (H, W, {c}) like the first image"
            )
        if img.shape[:2] == (h, w):
            out[i] = img.reshape(h, w, c)
            continue
        if c in (1, 3, 4):
            resized = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
            out[i] = resized.reshape(h, w, c)
        else:  # unusual channel counts: resize each channel as its own grayscale image
            for ch in range(c):
                pil = Image.fromarray(np.ascontiguousarray(img[..., ch]))
                out[i, ..., ch] = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
    return out


def channel_stats(
    images: np.ndarray, chunk_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation in [0, 1] units.

    Args:
      images: (N, H, W, C) uint8 (or (N, H, W) for one channel).
      chunk_size: images per chunk; sums accumulate in float64, so memory stays small.

    Returns:
      ``(mean, std)``, each (C,) float64.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"channel_stats expects uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_stats expects (N, H, W, C) with N > 0, got {images.shape}")
    c = images.shape[-1]
    total = np.zeros(c, np.float64)
    total_sq = np.zeros(c, np.float64)
    for start in range(0, images.shape[0], chunk_size):
        chunk = images[start : start + chunk_size].reshape(-1, c)
        total += chunk.sum(axis=0, dtype=np.float64)
        total_sq += np.einsum("ij,ij->j", chunk, chunk, dtype=np.float64)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    return mean / 255.0, np.sqrt(var) / 255.0
