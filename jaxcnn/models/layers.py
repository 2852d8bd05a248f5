"""Drop-in layers that are faster to train on XLA:CPU.

* ``Conv``: a 2-D convolution with the parameters of ``flax.linen.Conv`` (``kernel`` of shape
  (kh, kw, C_in, C_out), ``bias`` of shape (C_out,)), whose gradient uses
  ``jaxcnn.ops.fast_conv.conv2d_fast`` (``impl="fast"``) or plain ``lax`` (``impl="lax"``).
  Checkpoints and ported weights are interchangeable with ``nn.Conv``.
* ``DepthwiseConv``: a depthwise 2-D convolution (one filter per channel) with the parameters of
  ``nn.Conv(C, feature_group_count=C)`` (``kernel`` (kh, kw, 1, C)), computed as shifted
  multiply-adds (``jaxcnn.ops.depthwise``, ``impl="shift"``, 5-17x faster on XLA:CPU) or by
  ``lax`` (``impl="lax"``).
* ``max_pool_2x2``: 2x2 / stride 2 max pooling written as a reshape and a max, whose gradient
  is a cheap elementwise mask instead of XLA's select-and-scatter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxcnn.ops.depthwise import depthwise_conv2d, depthwise_conv2d_lax
from jaxcnn.ops.fast_conv import conv2d_fast, resolve_padding

__all__ = [
    "CONV_IMPLS",
    "DEPTHWISE_IMPLS",
    "Conv",
    "DepthwiseConv",
    "max_pool_2x2",
    "resolve_conv_impl",
    "resolve_depthwise_impl",
]

CONV_IMPLS = ("fast", "lax")


def _resolve_impl(impl: str, choices: tuple[str, ...], on_cpu: str, what: str) -> str:
    """``"auto"`` -> ``on_cpu`` on the CPU backend, else ``"lax"``; otherwise one of ``choices``."""
    if impl == "auto":
        import jax

        return on_cpu if jax.default_backend() == "cpu" else "lax"
    if impl not in choices:
        raise ValueError(f"{what} must be 'auto' or one of {choices}; got {impl!r}")
    return impl


def resolve_conv_impl(impl: str) -> str:
    """``"auto"`` -> ``"fast"`` on the CPU backend (where XLA's convolution kernel gradient is
    slow) and ``"lax"`` on GPU/TPU (where XLA's own gradients are the fast path)."""
    return _resolve_impl(impl, CONV_IMPLS, "fast", "conv_impl")


DEPTHWISE_IMPLS = ("shift", "lax")


def resolve_depthwise_impl(impl: str) -> str:
    """``"auto"`` -> ``"shift"`` on the CPU backend (XLA:CPU's grouped convolution is slow) and
    ``"lax"`` on GPU/TPU (cuDNN / the TPU convolution units run it well)."""
    return _resolve_impl(impl, DEPTHWISE_IMPLS, "shift", "depthwise_impl")


class Conv(nn.Module):
    """2-D convolution layer, NHWC in and out, same parameters as ``nn.Conv``.

    Attributes:
      features: output channels C_out.
      kernel_size: (kh, kw) or an int.
      strides: int or (sh, sw).
      padding: "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).
      use_bias: add a learned (C_out,) bias.
      dtype: compute dtype (None: promote input and params, like ``nn.Conv``); products
        accumulate in float32.
      param_dtype: dtype of ``kernel`` and ``bias``.
      kernel_init / bias_init: as in ``nn.Conv`` (LeCun normal, zeros).
      impl: "fast" (``conv2d_fast``: hand-written GEMM kernel gradient) or "lax"
        (``lax.conv_general_dilated`` and its automatic gradient, exactly ``nn.Conv``).
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    impl: str = "fast"

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C_in) -> (N, Ho, Wo, features)."""
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"impl must be one of {CONV_IMPLS}; got {self.impl!r}")
        if jnp.ndim(x) != 4:
            raise ValueError(f"Conv expects x of shape (N, H, W, C); got {jnp.shape(x)}")
        ks = self.kernel_size
        ks = (ks, ks) if isinstance(ks, int) else tuple(ks)
        if len(ks) != 2:
            raise ValueError(f"kernel_size must be an int or (kh, kw); got {self.kernel_size!r}")
        kernel = self.param(
            "kernel", self.kernel_init, (*ks, jnp.shape(x)[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.impl == "fast":
            y = conv2d_fast(x, kernel, self.strides, self.padding)
        else:
            s = self.strides
            s = (s, s) if isinstance(s, int) else tuple(s)
            pad = self.padding
            if not isinstance(pad, str):
                pad = resolve_padding(pad, jnp.shape(x)[1:3], ks, s)
            y = lax.conv_general_dilated(
                x, kernel, s, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        if bias is not None:
            y = y + bias.reshape(1, 1, 1, -1)
        return y


class DepthwiseConv(nn.Module):
    """Depthwise 2-D convolution, NHWC in and out, same parameters as
    ``nn.Conv(C, kernel_size, feature_group_count=C, use_bias=...)``.

    Attributes:
      kernel_size: (kh, kw) or an int.
      strides: int or (sh, sw).
      padding: "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).
      use_bias: add a learned (C,) bias.
      dtype / param_dtype / kernel_init / bias_init: as in ``nn.Conv``.
      impl: "shift" (shifted multiply-adds, ``jaxcnn.ops.depthwise.depthwise_conv2d``), "lax"
        (``lax.conv_general_dilated`` with ``feature_group_count=C``) or "auto" (shift on CPU).
    """

    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C) -> (N, Ho, Wo, C)."""
        impl = resolve_depthwise_impl(self.impl)
        if jnp.ndim(x) != 4:
            raise ValueError(f"DepthwiseConv expects x of shape (N, H, W, C); got {jnp.shape(x)}")
        ks = self.kernel_size
        ks = (ks, ks) if isinstance(ks, int) else tuple(ks)
        c = jnp.shape(x)[-1]
        kernel = self.param("kernel", self.kernel_init, (*ks, 1, c), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        fn = depthwise_conv2d if impl == "shift" else depthwise_conv2d_lax
        y = fn(x, kernel, self.strides, self.padding)
        if bias is not None:
            y = y + bias.reshape(1, 1, 1, -1)
        return y


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 (VALID: an odd last row/column is dropped).

    Same values as ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``. Written as
    ``x.reshape(N, H/2, 2, W/2, 2, C).max(axis=(2, 4))`` so that its gradient is an elementwise
    mask (``x == max`` broadcast back) rather than XLA's select-and-scatter, which is slow on CPU.

    Ties: when several entries of a 2x2 window equal its maximum, the gradient is split equally
    among them (JAX's rule for ``max``), whereas ``nn.max_pool`` gives all of it to one entry.
    Both are valid subgradients; with continuous inputs ties are rare, but after ReLU an
    all-zero window is a tie: its (zero-valued) entries then each get 1/4 of the incoming
    gradient, where ``nn.max_pool`` routes it all to one of them.

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
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
