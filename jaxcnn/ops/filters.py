"""Classic hand-designed 3x3 image kernels, as read-only float32 numpy arrays of shape (3, 3).

They are written for :func:`jaxcnn.ops.conv` (cross-correlation, the CNN convention): entry
[i, j] multiplies the pixel at row offset i - 1 and column offset j - 1 from the centre. Use
:func:`as_kernel` to turn one into an HWIO kernel.

Sign conventions: ``SOBEL_X``/``PREWITT_X`` respond positively where brightness increases to the
right, ``SOBEL_Y``/``PREWITT_Y`` where it increases downwards. ``VERTICAL_EDGE`` is the course's
worked example [[1, 0, -1], [2, 0, -2], [1, 0, -1]], i.e. ``-SOBEL_X``: positive where a bright
region on the left meets a dark one on the right. ``HORIZONTAL_EDGE`` is its transpose.
"""

from __future__ import annotations

import numpy as np

from jaxcnn.ops._ints import positive_int

__all__ = [
    "SOBEL_X",
    "SOBEL_Y",
    "PREWITT_X",
    "PREWITT_Y",
    "LAPLACIAN",
    "LAPLACIAN_8",
    "BOX_BLUR",
    "GAUSSIAN_BLUR",
    "SHARPEN",
    "VERTICAL_EDGE",
    "HORIZONTAL_EDGE",
    "EMBOSS",
    "OUTLINE",
    "IDENTITY",
    "CLASSIC_FILTERS",
    "as_kernel",
]


def _k(rows, scale=1.0) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64) * scale
    a = a.astype(np.float32)
    a.setflags(write=False)  # shared module constants must not be mutated in place
    return a


IDENTITY = _k([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
SOBEL_X = _k([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
SOBEL_Y = _k([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
PREWITT_X = _k([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]])
PREWITT_Y = _k([[-1, -1, -1], [0, 0, 0], [1, 1, 1]])
# second derivative (sum of d2/dx2 and d2/dy2); zero on constant and linear ramps
LAPLACIAN = _k([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
LAPLACIAN_8 = _k([[1, 1, 1], [1, -8, 1], [1, 1, 1]])
BOX_BLUR = _k(np.ones((3, 3)), 1 / 9)
GAUSSIAN_BLUR = _k([[1, 2, 1], [2, 4, 2], [1, 2, 1]], 1 / 16)
# identity + (-LAPLACIAN): boosts the difference from the neighbours; weights sum to 1
SHARPEN = _k([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
VERTICAL_EDGE = _k([[1, 0, -1], [2, 0, -2], [1, 0, -1]])
HORIZONTAL_EDGE = _k([[1, 2, 1], [0, 0, 0], [-1, -2, -1]])
EMBOSS = _k([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
# all neighbours against the centre; weights sum to 0
OUTLINE = _k([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])

CLASSIC_FILTERS: dict[str, np.ndarray] = {
    "identity": IDENTITY,
    "sobel_x": SOBEL_X,
    "sobel_y": SOBEL_Y,
    "prewitt_x": PREWITT_X,
    "prewitt_y": PREWITT_Y,
    "laplacian": LAPLACIAN,
    "laplacian_8": LAPLACIAN_8,
    "box_blur": BOX_BLUR,
    "gaussian_blur": GAUSSIAN_BLUR,
    "sharpen": SHARPEN,
    "vertical_edge": VERTICAL_EDGE,
    "horizontal_edge": HORIZONTAL_EDGE,
    "emboss": EMBOSS,
    "outline": OUTLINE,
}


def as_kernel(k2d, channels=1, depthwise=False) -> np.ndarray:
    """Turn a 2D filter (kh, kw) into an HWIO conv kernel (float32 numpy array).

    depthwise=False (default): shape (kh, kw, channels, 1). With channels=1 it filters a
      grayscale image x: (N, H, W, 1) -> (N, H', W', 1); with channels=C the same filter is
      applied to every channel and the results are summed into one output map.
    depthwise=True: shape (kh, kw, 1, channels), for ``conv(x, k, groups=channels)``: each
      channel of x: (N, H, W, channels) is filtered on its own -> (N, H', W', channels).
    """
    k = np.asarray(k2d, dtype=np.float32)
    if k.ndim != 2:
        raise ValueError(f"k2d must be a 2D filter of shape (kh, kw); got shape {k.shape}")
    channels = positive_int(channels, "channels")
    if depthwise:
        return np.ascontiguousarray(np.broadcast_to(k[:, :, None, None], (*k.shape, 1, channels)))
    return np.ascontiguousarray(np.broadcast_to(k[:, :, None, None], (*k.shape, channels, 1)))
