"""Depthwise 2-D convolution as a sum of shifted, scaled copies of the input.

A depthwise convolution (``feature_group_count == C``, one (kh, kw) filter per channel) is

    out[n, p, q, c] = sum_{i, j} xp[n, p*sh + i, q*sw + j, c] * kernel[i, j, 0, c]

(``xp``: ``x`` zero-padded). There is no sum over channels, so it is not a matrix product at
all: it is ``kh * kw`` elementwise multiply-adds of strided windows of ``xp``, which XLA fuses
into one vectorised loop. XLA:CPU instead runs ``lax.conv_general_dilated`` with
``feature_group_count=C`` through a generic grouped-convolution path that is 5-17x slower on the
layer shapes of MobileNetV2 / EfficientNet-Lite (measured in timings in the style of
``python -m experiments.bench ops``: (32, 80, 80, 96) 3x3 1022 ms vs 198 ms; (32, 20, 20, 480)
199 ms vs 12 ms). The gradient is plain autodiff of the same elementwise program (pads, slices,
multiply-adds, reductions): no convolution in either direction.

``depthwise_conv2d`` computes exactly what ``lax.conv_general_dilated(x, kernel, stride,
padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C)`` computes (up to
float rounding: the sums are taken in a different order), with the kernel in the same
``(kh, kw, 1, C)`` layout that ``flax.linen.Conv`` uses, so weights are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from jaxcnn.ops._ints import int_tuple
from jaxcnn.ops.fast_conv import resolve_padding

__all__ = ["depthwise_conv2d", "depthwise_conv2d_lax"]


def _check(x, kernel) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must be (N, H, W, C); got shape {jnp.shape(x)}")
    if jnp.ndim(kernel) != 4 or jnp.shape(kernel)[2] != 1:
        raise ValueError(f"kernel must be (kh, kw, 1, C) (the depthwise layout of nn.Conv); "
                         f"got shape {jnp.shape(kernel)}")
    if jnp.shape(kernel)[3] != jnp.shape(x)[3]:
        raise ValueError(f"kernel has {jnp.shape(kernel)[3]} channels but x has "
                         f"{jnp.shape(x)[3]} (x must be NHWC)")


def depthwise_conv2d(x, kernel, stride: int | Sequence[int] = 1, padding="SAME"):
    """Depthwise convolution by shifted multiply-adds.

    Args:
      x: (N, H, W, C).
      kernel: (kh, kw, 1, C), one filter per channel.
      stride: int or (sh, sw).
      padding: "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).

    Returns:
      (N, Ho, Wo, C), ``Ho = (H + top + bottom - kh) // sh + 1`` (likewise Wo).
    """
    _check(x, kernel)
    kh, kw = jnp.shape(kernel)[:2]
    sh, sw = int_tuple(stride, 2, "stride")
    (top, bottom), (left, right) = resolve_padding(padding, jnp.shape(x)[1:3], (kh, kw),
                                                   (sh, sw))
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    hp, wp = xp.shape[1:3]
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"window {(kh, kw)} is larger than the padded input {(hp, wp)}")
    acc_dtype = jnp.promote_types(xp.dtype, jnp.float32)
    out = None
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(xp, (0, i, j, 0),
                               (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1,
                                xp.shape[3]), (1, sh, sw, 1))
            term = window.astype(acc_dtype) * kernel[i, j, 0].astype(acc_dtype)
            out = term if out is None else out + term
    return out.astype(jnp.result_type(x, kernel))


def depthwise_conv2d_lax(x, kernel, stride: int | Sequence[int] = 1, padding="SAME"):
    """The same convolution through ``lax.conv_general_dilated(feature_group_count=C)``."""
    _check(x, kernel)
    kh, kw = jnp.shape(kernel)[:2]
    s = int_tuple(stride, 2, "stride")
    pad = padding if isinstance(padding, str) else resolve_padding(
        padding, jnp.shape(x)[1:3], (kh, kw), s)
    return lax.conv_general_dilated(x, kernel, s, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=jnp.shape(x)[3])
