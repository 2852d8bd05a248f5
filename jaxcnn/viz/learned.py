"""Figures of what a network learned: its first layer's filters and one layer's feature maps.

Each function writes one PNG to ``path`` (see :mod:`jaxcnn.viz.results`) and returns the path;
the arrays come from :mod:`jaxcnn.evaluate.inspection`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxcnn.viz._common import as_images, positive_int, show_image
from jaxcnn.viz.style import grid_shape, hide_ticks, new_figure, save_figure

__all__ = ["feature_maps", "first_layer_filters"]


def first_layer_filters(
    kernel,
    path,
    *,
    title: str | None = None,
    max_filters: int = 64,
    ncols: int = 8,
) -> Path:
    """The first convolution's filters as small images.

    Args:
      kernel: ``(kh, kw, C_in, C_out)`` (HWIO). Each filter is min-max normalised to [0, 1] on
        its own. With ``C_in == 3`` a filter is shown in colour (the RGB pattern it responds
        to most); otherwise the mean over input channels is shown in gray.
      max_filters: show at most this many (the first ones).
    """
    w = np.asarray(kernel, np.float32)
    if w.ndim != 4:
        raise ValueError(f"kernel must have shape (kh, kw, C_in, C_out) (HWIO), got {w.shape}")
    kh, kw, cin, cout = w.shape
    n = min(cout, positive_int(max_filters, "max_filters"))
    filters = np.moveaxis(w, -1, 0)[:n]  # (n, kh, kw, cin)
    filters = filters if cin == 3 else filters.mean(axis=-1)
    lo = filters.reshape(n, -1).min(axis=1)
    hi = filters.reshape(n, -1).max(axis=1)
    shape = (n,) + (1,) * (filters.ndim - 1)
    span = np.where(hi > lo, hi - lo, 1.0).reshape(shape)
    filters = (filters - lo.reshape(shape)) / span
    rows, cols = grid_shape(n, ncols)
    cell = 0.9
    fig, axes = new_figure(rows, cols, size=(cols * cell, rows * cell + 0.5), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i < n:
            show_image(ax, filters[i])
        else:
            ax.axis("off")
    if title is None:
        colour = "RGB" if cin == 3 else f"mean of {cin} input channels"
        title = f"First-layer filters ({n} of {cout}, {kh}x{kw}, {colour})"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def feature_maps(
    maps,
    path,
    max_maps: int = 32,
    title: str = "Feature maps",
    *,
    image=None,
    ncols: int = 8,
) -> Path:
    """Activations of one layer for one image, one panel per channel (each scaled on its own).

    Args:
      maps: ``(H, W, C)`` activations (a leading batch axis of 1 is accepted).
      max_maps: show at most this many channels (the first ones).
      image: optional input image ``(H0, W0, C0)`` drawn in the first panel.
    """
    a = np.asarray(maps, np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"maps must have shape (H, W, C) for one image, got {a.shape}")
    c = a.shape[-1]
    n = min(c, positive_int(max_maps, "max_maps"))
    panels = n + (image is not None)
    rows, cols = grid_shape(panels, ncols)
    fig, axes = new_figure(rows, cols, size=(cols * 1.2, rows * 1.3 + 0.5), squeeze=False)
    axes = axes.ravel()
    start = 0
    if image is not None:
        show_image(axes[0], as_images(np.asarray(image)[None], "image")[0])
        axes[0].set_title("input", fontsize=8)
        start = 1
    for i in range(n):
        ax = axes[start + i]
        ax.imshow(a[..., i], cmap="viridis", interpolation="nearest")
        hide_ticks(ax)
        ax.set_title(f"ch {i}", fontsize=7, fontweight="normal")
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(f"{title} ({n} of {c} channels, {a.shape[0]}x{a.shape[1]})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
