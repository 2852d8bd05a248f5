"""What the result figures share: input checks and the titled image grid.

Images are ``(N, H, W, C)`` with C = 1 or 3 (or ``(N, H, W)`` grayscale), uint8 in [0, 255] or
floats in [0, 1]. Labels are int ``(N,)``; ``probs`` are ``(N, K)`` probabilities; class names
are ``K`` strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcnn.viz.style import grid_shape, hide_ticks, new_figure, save_figure

GOOD = "#1a7f37"  # green: correct prediction
BAD = "#cf222e"  # red: wrong prediction
CELL = 1.35  # inches per image cell in grids


def as_images(images, name: str = "images") -> np.ndarray:
    """``(N, H, W, C)`` (C in 1, 3) or ``(N, H, W)`` -> displayable ``(N, H, W[, 3])`` array."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ValueError(
            f"{name} must have shape (N, H, W, C) with C in (1, 3) or (N, H, W), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 (0-255) or float (0-1), got dtype {arr.dtype}")


def as_labels(labels, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} class names, "
            f"found values in [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int64)


def as_names(class_names, num_classes: int | None = None) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty; pass one name per class")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"got {len(names)} class names for {num_classes} classes; pass one name per class"
        )
    return names


def as_probs(probs, n: int, num_classes: int) -> np.ndarray:
    arr = np.asarray(probs, np.float64)
    if arr.shape != (n, num_classes):
        raise ValueError(
            f"probs must have shape (N, K) = ({n}, {num_classes}) to match the images and "
            f"class names, got {arr.shape}"
        )
    return arr


def labelled(images, labels, class_names, probs=None):
    """Checked ``(images, labels, names, probs)`` of a labelled image figure (``probs`` None
    when not given)."""
    imgs = as_images(images)
    names = as_names(class_names)
    y = as_labels(labels, imgs.shape[0], len(names))
    p = None if probs is None else as_probs(probs, imgs.shape[0], len(names))
    return imgs, y, names, p


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def show_image(ax, image) -> None:
    """Draw one image (gray colormap for 2-D) without ticks."""
    if image.ndim == 2:
        vmax = 255 if image.dtype == np.uint8 else 1.0
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    hide_ticks(ax)


def image_grid(images, titles, colors, path, ncols: int, suptitle: str | None):
    n = len(images)
    rows, cols = grid_shape(n, ncols)
    fig, axes = new_figure(rows, cols, size=(cols * CELL, rows * (CELL + 0.25) + 0.4))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        if i < n:
            show_image(ax, images[i])
            ax.set_title(titles[i], fontsize=7.5, color=colors[i], fontweight="normal")
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


