"""Figures of the data: labelled sample images and augmented views.

Each function writes one PNG to ``path`` (see :mod:`jaxcnn.viz.results`) and returns the path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxcnn.viz._common import CELL, as_images, image_grid, labelled, positive_int, show_image
from jaxcnn.viz.style import new_figure, save_figure

__all__ = ["augmentation_examples", "sample_grid"]


def sample_grid(
    images,
    labels,
    class_names: Sequence[str],
    path,
    n: int = 32,
    *,
    title: str = "Training images and their labels",
    ncols: int = 8,
) -> Path:
    """The first ``n`` images, each titled with its class name.

    Args:
      images: ``(N, H, W, C)`` / ``(N, H, W)``; labels: int ``(N,)``; class_names: ``K`` names.
    """
    imgs, y, names, _ = labelled(images, labels, class_names)
    n = min(positive_int(n, "n"), imgs.shape[0])
    titles = [names[int(c)] for c in y[:n]]
    return image_grid(imgs[:n], titles, ["black"] * n, path, ncols, title)


def augmentation_examples(
    images,
    augment_fn: Callable[[np.ndarray], np.ndarray],
    path,
    n_images: int = 4,
    n_variants: int = 6,
    *,
    title: str = "Data augmentation: one image, several random views",
) -> Path:
    """Each row: an original image, then ``n_variants`` augmented versions of it.

    ``augment_fn`` maps a uint8 batch ``(B, H, W, C)`` to an augmented batch of the same shape
    (e.g. ``lambda x: jaxcnn.data.augment(key, x)``). It is called once on a batch holding
    ``n_variants`` copies of each image, so per-example randomness gives different views.
    """
    if not callable(augment_fn):
        raise ValueError(f"augment_fn must be callable (uint8 batch -> batch), got {augment_fn!r}")
    raw = np.asarray(images)
    if raw.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {raw.shape}")
    n_images = min(positive_int(n_images, "n_images"), raw.shape[0])
    n_variants = positive_int(n_variants, "n_variants")
    originals = raw[:n_images]
    batch = np.repeat(originals, n_variants, axis=0)
    out = np.asarray(augment_fn(batch))
    if out.shape[0] != batch.shape[0] or out.shape[-1] != batch.shape[-1]:
        raise ValueError(
            f"augment_fn returned shape {out.shape} for a batch of shape {batch.shape}; it must "
            "return one image per input image with the same channels"
        )
    originals, out = as_images(originals), as_images(out, "augment_fn output")
    cols = n_variants + 1
    fig, axes = new_figure(
        n_images, cols, size=(cols * CELL, n_images * CELL + 0.6), squeeze=False
    )
    for r in range(n_images):
        show_image(axes[r, 0], originals[r])
        for v in range(n_variants):
            show_image(axes[r, v + 1], out[r * n_variants + v])
    axes[0, 0].set_title("original", fontsize=9)
    for v in range(n_variants):
        axes[0, v + 1].set_title(f"view {v + 1}", fontsize=9, fontweight="normal")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
