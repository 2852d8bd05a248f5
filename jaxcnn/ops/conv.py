"""Convolution: the lax primitive, a from-scratch reference with its own backward pass, and the
mathematical (kernel-flipped) convolution.

Shapes (any spatial rank 1, 2 or 3; NHWC-style inputs, HWIO-style kernels):
  x:      (N, *spatial, C_in)               e.g. (N, H, W, C_in)
  kernel: (*window, C_in // groups, C_out)  e.g. (kh, kw, C_in // groups, C_out)
  out:    (N, *out_spatial, C_out)

with, per spatial axis, ``out = floor((n + lo + hi - dilation * (k - 1) - 1) / stride) + 1``.
What a CNN layer computes is the cross-correlation

  out[n, p, o] = sum_{t, c} x_padded[n, p * stride + t * dilation, g(o) * C_g + c] * kernel[t, c, o]

(``p`` and ``t`` are multi-indices over the spatial axes, ``C_g = C_in // groups`` and ``g(o)`` the
group of output channel ``o``; output channels come in ``groups`` contiguous blocks).
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.ops._checks import DIMENSION_NUMBERS, check_conv_args, prod
from jaxcnn.ops.shapes import out_size

__all__ = ["conv", "conv_reference", "true_convolution"]


def _as_arrays(x, kernel):
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    return x.astype(dtype), kernel.astype(dtype)


def conv(x, kernel, stride=1, padding="VALID", dilation=1, groups=1):
    """Cross-correlation as computed by CNN layers, via ``lax.conv_general_dilated``.

    Args:
      x: (N, *spatial, C_in) with 1, 2 or 3 spatial axes, e.g. (N, H, W, C_in).
      kernel: (*window, C_in // groups, C_out), e.g. (kh, kw, C_in // groups, C_out).
      stride: int or one int per spatial axis (>= 1).
      padding: "SAME" | "VALID" | int (every side) | sequence of ints (symmetric per axis) |
        sequence of (lo, hi) pairs, one per spatial axis. "SAME" follows TensorFlow: output size
        ceil(n / stride), the odd extra pad goes on the high side.
      dilation: kernel (atrous) dilation, int or one per spatial axis (>= 1).
      groups: feature groups; C_in and C_out must be divisible by it (groups == C_in is a
        depthwise convolution).

    Returns:
      (N, *out_spatial, C_out).

    Raises:
      ValueError: before tracing, for bad ranks, channel mismatch, groups not dividing the
        channels, non-positive stride/dilation, bad padding, or a window larger than the padded
        input. When the shapes fit PyTorch's layouts instead, the message says so and gives the
        fix: NCHW input (``x.transpose(0, 2, 3, 1)``), an OIHW kernel (out, in, kh, kw) with a
        square window (``kernel.transpose(2, 3, 1, 0)``), or an (H, W, C) image without its
        batch axis (``x[None]``). A kernel that is valid as HWIO is taken as HWIO, whatever it
        looks like: (16, 3, 3, 3) is a 16x3 window from 3 to 3 channels.
    """
    stride, pads, dilation, groups = check_conv_args(x, kernel, stride, padding, dilation, groups)
    x, kernel = _as_arrays(x, kernel)
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=pads,
        rhs_dilation=dilation,
        dimension_numbers=DIMENSION_NUMBERS[x.ndim - 2],
        feature_group_count=groups,
    )


def true_convolution(x, kernel, stride=1, padding="VALID", dilation=1, groups=1):
    """The mathematical convolution: :func:`conv` with the kernel flipped on every spatial axis.

    In 2D, for one channel and without padding/stride, the two operations are

      true convolution   S(i, j) = (I * K)(i, j) = sum_m sum_n I(i - m, j - n) K(m, n)
      cross-correlation  S(i, j) = (I ⋆ K)(i, j) = sum_m sum_n I(i + m, j + n) K(m, n)

    CNN layers (and :func:`conv`) compute the cross-correlation; since the kernel is learned, the
    flip makes no difference to what a network can represent. Note: chapter 001 of the course
    has these two formulas swapped. With ``padding="VALID"`` this equals
    ``scipy.signal.convolve(image, k, mode="valid")`` on a single-channel 2D image.

    Args and shapes as :func:`conv`: x (N, *spatial, C_in), kernel (*window, C_in // groups,
    C_out); returns (N, *out_spatial, C_out).
    """
    check_conv_args(x, kernel, stride, padding, dilation, groups)
    kernel = jnp.asarray(kernel)
    nd = kernel.ndim - 2
    return conv(x, jnp.flip(kernel, axis=tuple(range(nd))), stride, padding, dilation, groups)


# ---------------------------------------------------------------------------------------------
# The reference convolution: pad, gather the sliding windows, multiply-accumulate.
# ---------------------------------------------------------------------------------------------


def _windows(xp, window, stride, dilation, out):
    """Gather the sliding windows of a padded array, one strided slice per kernel tap.

    xp: (N, *padded_spatial, C). Returns (N, *out, T, C), T = prod(window), taps in row-major
    order over the window: ``result[n, p, t, c] = xp[n, p * stride + t * dilation, c]``.
    The loop runs over the T kernel taps (9 for 3x3), never over pixels.
    """
    n, c = xp.shape[0], xp.shape[-1]
    taps = []
    for offs in itertools.product(*(range(k) for k in window)):
        geom = zip(offs, dilation, out, stride, strict=True)
        start = (0, *(o * d for o, d in zip(offs, dilation, strict=True)), 0)
        limit = (n, *(o * d + (m - 1) * s + 1 for o, d, m, s in geom), c)
        taps.append(lax.slice(xp, start, limit, (1, *stride, 1)))
    return jnp.stack(taps, axis=-2)


def _contract(patches, kernel, groups):
    """Multiply-accumulate windows with a kernel.

    patches: (N, *out, T, C_in); kernel: (T, C_in // groups, C_out). Returns (N, *out, C_out).
    With one group this is the im2col matrix product (N*prod(out), T*C_in) @ (T*C_in, C_out).
    """
    lead = patches.shape[:-2]
    t, c_in = patches.shape[-2:]
    c_out = kernel.shape[-1]
    m = prod(lead)
    if groups == 1:
        y = patches.reshape(m, t * c_in) @ kernel.reshape(t * c_in, c_out)
    else:
        cg, og = c_in // groups, c_out // groups
        y = jnp.einsum(
            "mtgc,tcgo->mgo",
            patches.reshape(m, t, groups, cg),
            kernel.reshape(t, cg, groups, og),
        )
    return y.reshape(*lead, c_out)


def _geometry(x_shape, k_shape, cfg):
    stride, pads, dilation, _ = cfg
    spatial, window = x_shape[1:-1], k_shape[:-2]
    out = tuple(
        out_size(n, k, s, d, lo, hi)
        for n, k, s, d, (lo, hi) in zip(spatial, window, stride, dilation, pads, strict=True)
    )
    return spatial, window, out


# The windows of a whole batch can be ~10x larger than the input (151 MB for 128x32x32x32 and
# a 3x3 kernel) and copying them through main memory costs more than the arithmetic. So on CPU
# the batch is processed in chunks (lax.map) whose windows stay in cache: same result, about 5x
# faster there. A batch that fits in one chunk takes no loop; accelerators get one chunk.
_CHUNK_BYTES = 2**19


def _chunk_size(n: int, item_bytes: int) -> int:
    """The largest divisor of the batch size n whose chunk of windows fits _CHUNK_BYTES."""
    if jax.default_backend() != "cpu":
        return n
    best = 1
    for c in range(1, n + 1):
        if n % c == 0 and c * item_bytes <= _CHUNK_BYTES:
            best = c
    return best


def _over_batch(fn, arrays, item_bytes, reduce=False):
    """Apply ``fn`` to chunks of the leading (batch) axis of ``arrays``; concatenate the results
    along the batch axis, or sum them when ``reduce``."""
    n = arrays[0].shape[0]
    c = _chunk_size(n, item_bytes)
    if c == n:
        return fn(*arrays)
    split = tuple(a.reshape(n // c, c, *a.shape[1:]) for a in arrays)
    ys = lax.map(lambda args: fn(*args), split)
    return ys.sum(0) if reduce else ys.reshape(n, *ys.shape[2:])


def _forward(x, kernel, cfg):
    stride, pads, dilation, groups = cfg
    _, window, out = _geometry(x.shape, kernel.shape, cfg)
    t = prod(window)
    k = kernel.reshape(t, *kernel.shape[-2:])

    def chunk(xc):
        xp = jnp.pad(xc, ((0, 0), *pads, (0, 0)))
        return _contract(_windows(xp, window, stride, dilation, out), k, groups)

    return _over_batch(chunk, (x,), prod(out) * t * x.shape[-1] * x.dtype.itemsize)


def _grad_kernel(x, g, k_shape, cfg):
    """dL/dK: the padded input correlated with dL/dOut dilated by the stride.

    dK[t, c, o] = sum_{n, p} x_padded[n, p * stride + t * dilation, c] * g[n, p, o], i.e. for each
    kernel tap t, the stride-dilated gradient slid over the padded input starting at t * dilation.
    The strided slices at those offsets are exactly the forward windows, so they are gathered
    with the same machinery and contracted over batch and output positions.

    x: (N, *spatial, C_in); g: (N, *out, C_out). Returns (*window, C_in // groups, C_out).
    """
    stride, pads, dilation, groups = cfg
    _, window, out = _geometry(x.shape, k_shape, cfg)
    t, c_in, c_out = prod(window), x.shape[-1], g.shape[-1]

    def chunk(xc, gc):
        xp = jnp.pad(xc, ((0, 0), *pads, (0, 0)))
        patches = _windows(xp, window, stride, dilation, out)  # (n, *out, T, C_in)
        m = prod(out) * xc.shape[0]
        if groups == 1:
            return patches.reshape(m, t * c_in).T @ gc.reshape(m, c_out)
        cg, og = c_in // groups, c_out // groups
        return jnp.einsum(
            "mtgc,mgo->tcgo", patches.reshape(m, t, groups, cg), gc.reshape(m, groups, og)
        )

    item_bytes = prod(out) * t * c_in * x.dtype.itemsize
    return _over_batch(chunk, (x, g), item_bytes, reduce=True).reshape(k_shape)


def _grad_input(g, kernel, x_shape, cfg):
    """dL/dInput: full convolution of the stride-dilated dL/dOut with the flipped kernel.

    1. dilate g by the stride (stride - 1 zeros between neighbours): the forward only looked at
       every stride-th position;
    2. pad by the dilated kernel extent minus 1, ext = dilation * (k - 1), on both sides ("full");
    3. correlate with the kernel flipped on every spatial axis, its in/out channels swapped
       (group by group);
    4. crop to undo the forward padding: keep padded positions [lo, lo + n). Rows/columns at the
       high end that the forward stride never reached get zero gradient.

    Steps 1, 2 and 4 are one ``lax.pad`` (interior padding = stride - 1; a negative edge pad
    crops), so only the n kept positions are computed.

    g: (N, *out, C_out); kernel: (*window, C_in // groups, C_out). Returns (N, *spatial, C_in).
    """
    stride, pads, dilation, groups = cfg
    spatial, window, out = _geometry(x_shape, kernel.shape, cfg)
    config = [(0, 0, 0)]
    for n, k, s, d, m, (lo, _) in zip(spatial, window, stride, dilation, out, pads, strict=True):
        ext = d * (k - 1)
        # full padded result length would be n + lo + hi; keeping [lo, lo + n) needs
        # ext - lo zeros before the dilated g and n + lo - (m - 1) * s - 1 after it.
        config.append((ext - lo, n + lo - (m - 1) * s - 1, s - 1))
    config.append((0, 0, 0))
    t = prod(window)
    cg, c_out = kernel.shape[-2:]
    # flipped kernel with in/out channels swapped, per group: (T, C_out // groups, C_in)
    kf = jnp.flip(kernel, axis=tuple(range(len(window)))).reshape(t, cg, groups, c_out // groups)
    kf = kf.transpose(0, 3, 2, 1).reshape(t, c_out // groups, groups * cg)
    ones = (1,) * len(window)

    def chunk(gc):
        gp = lax.pad(gc, jnp.zeros((), gc.dtype), config)  # (n, *(spatial + ext), C_out)
        patches = _windows(gp, window, ones, dilation, spatial)  # (n, *spatial, T, C_out)
        return _contract(patches, kf, groups)

    return _over_batch(chunk, (g,), prod(spatial) * t * c_out * g.dtype.itemsize)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_ref(x, kernel, cfg):
    return _forward(x, kernel, cfg)


def _conv_ref_fwd(x, kernel, cfg):
    return _forward(x, kernel, cfg), (x, kernel)


def _conv_ref_bwd(cfg, residuals, g):
    return _backward(cfg, residuals, g)


def _backward(cfg, residuals, g):
    """The hand-written backward pass (looked up at trace time, so tests can watch it)."""
    x, kernel = residuals
    return _grad_input(g, kernel, x.shape, cfg), _grad_kernel(x, g, kernel.shape, cfg)


_conv_ref.defvjp(_conv_ref_fwd, _conv_ref_bwd)


def conv_reference(x, kernel, stride=1, padding="VALID", dilation=1, groups=1):
    """The same cross-correlation as :func:`conv`, written from first principles.

    Forward: pad with zeros (``jnp.pad``), gather the sliding windows as one strided slice per
    kernel tap (stacked to (N, *out, T, C_in), T = prod(window)), then multiply-accumulate with
    the kernel in one matrix product (im2col; an einsum per group when ``groups > 1``). Large
    batches are processed in cache-sized chunks. No ``lax.conv*`` is used.

    Backward (``jax.custom_vjp``, not autodiff of the forward), the formulas of the course:
      dL/dK     = padded input correlated with dL/dOut dilated by the stride (taps spaced by the
                  kernel dilation);
      dL/dInput = full convolution of the stride-dilated dL/dOut (padded by dilation * (k - 1))
                  with the spatially flipped kernel (in/out channels swapped, per group), cropped
                  to undo the forward padding; positions the stride never reached get zero.

    Args, shapes and errors as :func:`conv`: x (N, *spatial, C_in), kernel (*window,
    C_in // groups, C_out) -> (N, *out_spatial, C_out). jit-able; stride, padding, dilation and
    groups must be static (Python values).
    """
    cfg = check_conv_args(x, kernel, stride, padding, dilation, groups)
    x, kernel = _as_arrays(x, kernel)
    return _conv_ref(x, kernel, cfg)
