"""A 2-D convolution whose backward pass is fast on XLA:CPU.

``conv2d_fast(x, kernel, stride, padding)`` computes exactly what ``lax.conv_general_dilated``
computes (NHWC input, HWIO kernel, cross-correlation)::

    out[n, p, q, o] = sum_{i, j, c} xp[n, p*sh + i, q*sw + j, c] * kernel[i, j, c, o]

(``xp`` is ``x`` zero-padded) and differs only in how the gradient is computed, through a
``jax.custom_vjp``:

* forward: ``lax.conv_general_dilated`` (XLA:CPU hands it to YNNPACK, which is fast);
* input gradient: the transpose of that same linear map (``jax.linear_transpose``), i.e. the
  usual "transposed convolution" of ``g`` with the flipped kernel, also run by YNNPACK;
* kernel gradient: written by hand as matrix products (GEMMs). Differentiating ``out`` by
  ``kernel[i, j, c, o]`` gives

      dk[i, j, c, o] = sum_{n, p, q} xp[n, p*sh + i, q*sw + j, c] * g[n, p, q, o],

  a sum over all M = N * Ho * Wo output positions. For one kernel row ``i`` put the ``kw``
  horizontally shifted (strided) views of ``xp`` side by side,
  ``cols_i[m, (j, c)] = xp[n, p*sh + i, q*sw + j, c]`` of shape (M, kw*C); then
  ``dk[i] = cols_i^T @ g2`` with ``g2 = g.reshape(M, O)`` -- one GEMM per kernel row with a long
  contraction (M, e.g. 131072) and a small (kw*C, O) result.

Why by hand: XLA:CPU lowers the kernel gradient of ``lax.conv_general_dilated`` to a
"convolution" whose window is the whole feature map (e.g. 32x32, output 3x3), which its conv
kernels run 4-5x slower than the forward pass. The row-GEMM form measured fastest among per-tap
GEMMs (9 GEMMs with a narrow C-wide contraction operand: low arithmetic intensity), full im2col
(one GEMM, but the (M, kh*kw*C) patch matrix costs more to write than the GEMM saves), batch
chunking (split-K through a batched dot + sum) and the "kernel gradient as a forward conv"
rewrite. See ``visuals/bench/README.md`` for the measurements.

bfloat16 inputs are supported: every product accumulates in float32
(``preferred_element_type``) and the results are cast back to the input dtypes.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.ops import _checks
from jaxcnn.ops._ints import int_tuple

__all__ = ["checked_conv_args", "conv2d_fast", "kernel_grad", "resolve_padding"]

_DN = _checks.DIMENSION_NUMBERS[2]  # NHWC input, HWIO kernel


def resolve_padding(padding, in_hw, window, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ((top, bottom), (left, right)) padding.

    Args:
      padding: "SAME" (TensorFlow/lax rule, :func:`jaxcnn.ops.shapes.same_padding`: output size
        ceil(n / stride), the odd extra pad on the high side), "VALID" (no padding), an int
        (every side), a pair of ints (symmetric per axis) or a pair of (lo, hi) pairs.
      in_hw, window, stride: (H, W), (kh, kw) and (sh, sw).
    """
    top_bottom, left_right = _checks.resolve_padding(
        _checks.normalize_padding(padding, 2), in_hw, window, stride, (1, 1)
    )
    return top_bottom, left_right


def _conv(x, kernel, stride, pads):
    """The forward convolution, accumulating in float32, result in the inputs' dtype."""
    out = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=pads,
        dimension_numbers=_DN,
        preferred_element_type=jnp.float32,
    )
    return out.astype(jnp.result_type(x.dtype, kernel.dtype))


def _kernel_grad_rows(x, g, window, stride, pads):
    """float32 (kh, kw, C, O) kernel gradient of one batch (chunk), one GEMM per kernel row."""
    (kh, kw), (sh, sw) = window, stride
    n, _, _, c = x.shape
    _, ho, wo, o = g.shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    g2 = g.reshape(n * ho * wo, o)  # (M, O)
    # Horizontal im2col shared by all kernel rows: (N, Hp, Wo, kw*C), column (j, c).
    wspan = (wo - 1) * sw + 1
    cols = jnp.concatenate([xp[:, :, j : j + wspan : sw, :] for j in range(kw)], axis=-1)
    hspan = (ho - 1) * sh + 1
    rows = []
    for i in range(kh):
        ci = cols[:, i : i + hspan : sh].reshape(n * ho * wo, kw * c)  # (M, kw*C)
        # (O, kw*C) = g2^T @ ci, contracting the long M axis; g2 as the left operand measured
        # faster than the mirrored product.
        rows.append(
            lax.dot_general(g2, ci, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        )
    return jnp.stack(rows).reshape(kh, o, kw, c).transpose(0, 2, 3, 1)  # (kh, kw, C, O)


def _num_chunks(n: int, positions_per_image: int, target: int) -> int:
    """The largest divisor of n that leaves >= ``target`` output positions per chunk (>= 1)."""
    most = max(1, n * positions_per_image // target)
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def kernel_grad(x, g, window, stride, pads, dtype=None, chunk_positions=2048):
    """Gradient of sum(g * conv(x, k)) with respect to k, as GEMMs over the batch.

    The sum over M = N * Ho * Wo positions is split over chunks of whole images (a ``lax.scan``
    accumulating in float32), about ``chunk_positions`` output positions each, so that the
    per-chunk patch matrices stay in cache: on the 2-core test machine this made cnn3's 32x32
    layer's kernel gradient 2.5x faster than one pass over the whole batch, and the 8x8 layers
    were no slower.

    Args:
      x: (N, H, W, C) input of the convolution.
      g: (N, Ho, Wo, O) cotangent of its output.
      window: (kh, kw); stride: (sh, sw); pads: ((top, bottom), (left, right)).
      dtype: result dtype (default: x's dtype). Products accumulate in float32.
      chunk_positions: target output positions per chunk (None: no chunking).

    Returns:
      (kh, kw, C, O).
    """
    n, ho, wo = g.shape[:3]
    nc = 1 if chunk_positions is None else _num_chunks(n, ho * wo, chunk_positions)
    if nc == 1:
        dk = _kernel_grad_rows(x, g, window, stride, pads)
    else:
        xs = x.reshape(nc, n // nc, *x.shape[1:])
        gs = g.reshape(nc, n // nc, *g.shape[1:])

        def body(acc, xg):
            return acc + _kernel_grad_rows(*xg, window, stride, pads), None

        acc0 = jnp.zeros((*window, x.shape[-1], g.shape[-1]), jnp.float32)
        dk = lax.scan(body, acc0, (xs, gs))[0]
    return dk.astype(dtype or x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_fast(x, kernel, stride, pads):
    return _conv(x, kernel, stride, pads)


def _fwd(x, kernel, stride, pads):
    return _conv(x, kernel, stride, pads), (x, kernel)


def _bwd(stride, pads, res, g):
    x, kernel = res
    # Input gradient: the transpose of the (linear in x) forward conv, run by lax/YNNPACK.
    (dx,) = jax.linear_transpose(
        lambda xx: _conv(xx, kernel, stride, pads), jax.ShapeDtypeStruct(x.shape, x.dtype)
    )(g.astype(x.dtype))
    dk = kernel_grad(x, g, kernel.shape[:2], stride, pads, dtype=kernel.dtype)
    return dx, dk


_conv2d_fast.defvjp(_fwd, _bwd)


def conv2d_fast(x, kernel, stride=1, padding="SAME", dilation=1, groups=1):
    """2-D cross-correlation (what CNN layers compute) with a CPU-friendly backward pass.

    Same values as ``lax.conv_general_dilated(x, kernel, stride, padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))``; the gradients are those of that function,
    computed as described in the module docstring.

    Args:
      x: (N, H, W, C) float array (float32 or bfloat16).
      kernel: (kh, kw, C, O), same kind of dtype.
      stride: int or (sh, sw), >= 1.
      padding: "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).
      dilation, groups: only 1 is supported (accepted so callers can pass them explicitly).

    Returns:
      (N, Ho, Wo, O) in the promoted dtype of x and kernel, accumulated in float32.

    Raises:
      ValueError: bad ranks, channel mismatch, bad stride/padding, dilation or groups != 1, or a
        window larger than the padded input.
    """
    x, kernel, stride, pads = checked_conv_args(x, kernel, stride, padding, dilation, groups,
                                                "conv2d_fast")
    return _conv2d_fast(x, kernel, stride, pads)


def checked_conv_args(x, kernel, stride, padding, dilation, groups, name: str):
    """Validate the arguments of a dense NHWC/HWIO 2-D convolution without dilation or groups.

    Returns:
      (x, kernel, (sh, sw), ((top, bottom), (left, right))) with x and kernel as jax arrays.

    Raises:
      ValueError: bad ranks, channel mismatch, non-float dtypes, bad stride/padding, dilation or
        groups != 1, or a window larger than the padded input; ``name`` starts the message.
    """
    xs, ks = tuple(jnp.shape(x)), tuple(jnp.shape(kernel))
    if len(xs) != 4:
        raise ValueError(f"x must be (N, H, W, C); got shape {xs}")
    if len(ks) != 4:
        raise ValueError(f"kernel must be (kh, kw, C_in, C_out); got shape {ks}")
    if xs[3] != ks[2]:
        raise ValueError(
            f"kernel expects {ks[2]} input channels but x (NHWC) has {xs[3]}; got x {xs}, "
            f"kernel {ks}"
        )
    if int_tuple(dilation, 2, "dilation") != (1, 1):
        raise ValueError(f"{name} supports dilation 1 only; got {dilation!r}")
    if isinstance(groups, bool) or groups != 1:
        raise ValueError(f"{name} supports groups=1 only; got {groups!r}")
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    for arg, a in (("x", x), ("kernel", kernel)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"{arg} must be a floating array; got dtype {a.dtype}")
    stride = int_tuple(stride, 2, "stride")
    pads = resolve_padding(padding, xs[1:3], ks[:2], stride)
    _checks.check_window_fits(xs[1:3], ks[:2], (1, 1), pads, "kernel window", "kernel")
    return x, kernel, stride, pads
