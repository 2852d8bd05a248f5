"""Shared figure style for jaxcnn's lessons: one look, one save helper.

Matplotlib is imported inside the functions, so ``import jaxcnn.viz.style`` stays cheap and
never selects a backend on its own.
"""

from __future__ import annotations

from pathlib import Path

DPI = 150
"""Resolution of every saved figure (dots per inch)."""

CMAP_IMAGE = "gray"
"""Colour map for single-channel images (pixels, digits)."""

CMAP_SIGNED = "RdBu_r"
"""Colour map for signed values (kernels, feature maps): red positive, blue negative."""

RC = {
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "axes.grid": False,
    "image.interpolation": "nearest",
}


def apply_style() -> None:
    """Set jaxcnn's matplotlib defaults (font sizes, bold titles, nearest-pixel images)."""
    import matplotlib as mpl

    mpl.rcParams.update(RC)


def new_figure(nrows: int = 1, ncols: int = 1, *, size=(6.0, 4.0), **kwargs):
    """``plt.subplots`` with jaxcnn's style applied; returns ``(fig, axes)``."""
    import matplotlib.pyplot as plt

    apply_style()
    return plt.subplots(nrows, ncols, figsize=size, **kwargs)


def grid_shape(n: int, ncols: int) -> tuple[int, int]:
    """``(rows, cols)`` of a grid of ``n`` panels at most ``ncols`` wide."""
    ncols = max(1, min(ncols, n))
    return -(-n // ncols), ncols


def hide_ticks(ax) -> None:
    """Remove ticks and tick labels from an image axis, keeping its frame."""
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str | Path, *, dpi: int = DPI) -> Path:
    """Save ``fig`` as ``path`` (parent folders created), close it and return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path
