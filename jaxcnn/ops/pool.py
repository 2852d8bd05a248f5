"""Pooling: max / average / min over sliding windows, and global pooling.

x: (N, *spatial, C) with 1, 2 or 3 spatial axes, e.g. (N, H, W, C); pooling acts on each
channel separately and has no parameters. Windows are swept with ``lax.reduce_window``;
``max_pool_2x2`` is the 2x2/2 special case with a backward pass that is cheap on CPUs.

The rank of x fixes the spatial axes, so one (H, W, C) image needs its batch axis:
``max_pool(image[None], 2)[0]``. Without it the image would read as a batch of H 1-D signals
(N, L, C) and be pooled along W only; to rule that out, 1-D pooling of a rank-3 x takes the
window as a 1-tuple, ``max_pool(signals, (2,))`` (an int is accepted only when N == 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.ops._checks import check_input_rank, check_pool_args
from jaxcnn.ops._ints import shape_of

__all__ = ["max_pool", "avg_pool", "min_pool", "global_avg_pool", "global_max_pool",
           "max_pool_2x2"]


def _extreme(dtype, largest: bool):
    """+inf / -inf for floats, the dtype's max / min for ints: the identity of min / max."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.array(np.inf if largest else -np.inf, dtype)
    info = jnp.iinfo(dtype)
    return np.array(info.max if largest else info.min, dtype)


def _reduce(x, init, op, window, stride, pads):
    return lax.reduce_window(
        x,
        init,
        op,
        window_dimensions=(1, *window, 1),
        window_strides=(1, *stride, 1),
        padding=((0, 0), *pads, (0, 0)),
    )


_ARGS = """
    Args:
      x: (N, *spatial, C) with 1, 2 or 3 spatial axes, e.g. (N, H, W, C).
      window: int or one int per spatial axis. For a rank-3 x (N, L, C) a 1-tuple ``(k,)``
        (an int is refused when N > 1: x might be one (H, W, C) image, see the module doc).
      stride: int or one int per spatial axis; None (default) means stride = window
        (non-overlapping windows).
      padding: "SAME" | "VALID" | int | sequence of ints | sequence of (lo, hi) pairs, as in
        :func:`jaxcnn.ops.conv`. Padded positions never win and never count{extra}.

    Returns:
      (N, *out_spatial, C), out = floor((n + lo + hi - window) / stride) + 1 per axis
      ("SAME": ceil(n / stride)).

    Raises:
      ValueError: before tracing, for a bad rank, non-positive window/stride, bad padding, a
        window larger than the padded input, or a rank-3 x that may be an unbatched image
        (with the ``x[None]`` hint).
"""


def max_pool(x, window, stride=None, padding="VALID"):
    window, stride, pads = check_pool_args(x, window, stride, padding)
    x = jnp.asarray(x)
    return _reduce(x, _extreme(x.dtype, False), lax.max, window, stride, pads)


def min_pool(x, window, stride=None, padding="VALID"):
    window, stride, pads = check_pool_args(x, window, stride, padding)
    x = jnp.asarray(x)
    return _reduce(x, _extreme(x.dtype, True), lax.min, window, stride, pads)


def avg_pool(x, window, stride=None, padding="VALID"):
    window, stride, pads = check_pool_args(x, window, stride, padding)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.float32)
    zero = np.array(0, x.dtype)
    total = _reduce(x, zero, lax.add, window, stride, pads)
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return total / np.prod(window)
    # count of real (non-padded) elements under each window, same for every image and channel
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    count = _reduce(ones, zero, lax.add, window, stride, pads)
    return total / count


max_pool.__doc__ = (
    "Max pooling: the largest value under each window.\n\n"
    "    The gradient flows only to the maximum of each window (to the first one on ties)."
    + _ARGS.format(extra="")
)
min_pool.__doc__ = "Min pooling: the smallest value under each window.\n" + _ARGS.format(extra="")
avg_pool.__doc__ = (
    "Average pooling: the mean of each window.\n\n"
    "    With padding ('SAME' or explicit) each window is divided by the number of real\n"
    "    (non-padded) elements it covers, not by the window size (TensorFlow's convention),\n"
    "    so border averages are not pulled towards zero. Integer inputs give float32."
    + _ARGS.format(extra=" in the average")
)


def _global_axes(x):
    nd = check_input_rank(shape_of(x, "x"), "x")
    return tuple(range(1, nd + 1))


def global_avg_pool(x):
    """Global average pooling: the mean over all spatial positions.

    x: (N, *spatial, C) -> (N, C).
    """
    axes = _global_axes(x)
    return jnp.mean(jnp.asarray(x), axis=axes)


def global_max_pool(x):
    """Global max pooling: the maximum over all spatial positions.

    x: (N, *spatial, C) -> (N, C).
    """
    axes = _global_axes(x)
    return jnp.max(jnp.asarray(x), axis=axes)


WINDOW_2X2 = ((0, 0), (0, 1), (1, 0), (1, 1))  # row-major: the first maximum gets the gradient


def window_views(t):
    """The four (N, H/2, W/2, C) entries of every 2x2 window of (N, H, W, C) t, in the order of
    ``WINDOW_2X2`` (shared with :mod:`jaxcnn.ops.batchnorm`'s fused pool)."""
    n, h, w, c = t.shape
    v = t.reshape(n, h // 2, 2, w // 2, 2, c)
    return [v[:, :, i, :, j] for i, j in WINDOW_2X2]


def from_window_views(parts):
    """Inverse of :func:`window_views`: four (N, h, w, C) arrays -> (N, 2h, 2w, C)."""
    n, h, w, c = parts[0].shape
    v = jnp.stack(parts, axis=3).reshape(n, h, w, 2, 2, c)  # (.., i, j, c)
    return v.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


def _window_max(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


_pool_2x2 = jax.custom_vjp(_window_max)


def _pool_2x2_fwd(x):
    # The backward pass keeps an int8 route (the window position, 0-3, of each window's first
    # maximum: a sixteenth of x in float32) instead of x, a conv output at full resolution.
    # It is an argmax, a reduction that XLA writes out: a route of compares and selects is
    # fused into the backward pass's consumer, and x stays alive until then after all. With
    # several processes the compare-and-select route is used: there a program holding the
    # argmax hung when JAX loaded it from its persistent compilation cache (2 processes x 4
    # CPU devices, gloo).
    y = _window_max(x)
    views = window_views(x)
    if jax.process_count() == 1:
        return y, lax.argmax(jnp.stack(views, axis=-1), 4, jnp.int8)
    route = jnp.full(y.shape, len(views) - 1, jnp.int8)
    for k in reversed(range(len(views) - 1)):  # the first k whose entry is the maximum
        route = jnp.where(views[k] == y, jnp.int8(k), route)
    return y, route


def _pool_2x2_bwd(route, g):
    zero = jnp.zeros((), g.dtype)
    return (from_window_views([jnp.where(route == k, g, zero) for k in range(len(WINDOW_2X2))]),)


_pool_2x2.defvjp(_pool_2x2_fwd, _pool_2x2_bwd)


def max_pool_2x2(x):
    """2x2 max pooling with stride 2, VALID (an odd last row/column is dropped).

    The values of ``max_pool(x, 2)``; the gradient goes to the first maximum of each window in
    row-major order, the entry XLA's own ``max_pool`` gradient (select-and-scatter) picks, so
    ties (e.g. all-zero windows after a ReLU) get no split gradient. Written as a reshape and a
    max with a hand-written backward pass: one elementwise pass, which on XLA:CPU is several
    times cheaper than select-and-scatter or autodiff of the reshape-max (which counts ties).
    For that pass it keeps an int8 map of where each window's maximum was, not x (x is
    usually the largest activation a conv -> pool network stores for its backward pass).

    Args:
      x: (N, H, W, C) with H, W >= 2.

    Returns:
      (N, H // 2, W // 2, C).
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"max_pool_2x2 expects x of shape (N, H, W, C); got {jnp.shape(x)}")
    n, h, w, c = jnp.shape(x)
    if h < 2 or w < 2:
        raise ValueError(f"max_pool_2x2 needs H, W >= 2; got x of shape {jnp.shape(x)}")
    return _pool_2x2(jnp.asarray(x)[:, : h // 2 * 2, : w // 2 * 2])
