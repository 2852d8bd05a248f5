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
* ``FusedBatchNorm``: ``nn.BatchNorm`` (+ ReLU) with the same variables (``use_scale`` too) and a
  hand-written backward pass (``jaxcnn.ops.batchnorm``): fewer passes over the activation.

And what the networks share:

* ``BatchNormNet``: the keyword-only attributes of every BatchNorm network and block
  (``bn_momentum``, ``bn_epsilon``, ``dtype``, ``param_dtype``) and its BatchNorm layer ``bn``.
* ``pooled_classifier``: global average pooling and the ``head`` classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxcnn.ops.depthwise import depthwise_conv2d, depthwise_conv2d_lax
from jaxcnn.ops.fast_conv import conv2d_fast, resolve_padding
from jaxcnn.ops.pool import max_pool_2x2 as pool_2x2_first_max

__all__ = [
    "CONV_IMPLS",
    "DEPTHWISE_IMPLS",
    "BatchNormNet",
    "Conv",
    "DepthwiseConv",
    "FusedBatchNorm",
    "max_pool_2x2",
    "pooled_classifier",
    "resolve_conv_impl",
    "resolve_depthwise_impl",
]

CONV_IMPLS = ("fast", "lax", "onednn")


def _resolve_impl(impl: str, choices: tuple[str, ...], on_cpu: str, what: str) -> str:
    """``"auto"`` -> ``on_cpu`` on the CPU backend, else ``"lax"``; otherwise one of ``choices``."""
    if impl == "auto":
        import jax

        return on_cpu if jax.default_backend() == "cpu" else "lax"
    if impl not in choices:
        raise ValueError(f"{what} must be 'auto' or one of {choices}; got {impl!r}")
    return impl


def resolve_conv_impl(impl: str) -> str:
    """``"auto"`` -> on the CPU backend ``"onednn"`` when the optional oneDNN kernels are
    installed (``pip install "jaxcnn[onednn]"``, built on first use), else ``"fast"`` (XLA's
    own convolution kernel gradient is slow there); ``"lax"`` on GPU/TPU (where XLA's own
    gradients are the fast path)."""
    resolved = _resolve_impl(impl, CONV_IMPLS, "fast", "conv_impl")
    if impl == "auto" and resolved == "fast":
        from jaxcnn.ops import onednn

        if onednn.available():
            return "onednn"
    return resolved


DEPTHWISE_IMPLS = ("shift", "lax")


def resolve_depthwise_impl(impl: str) -> str:
    """``"auto"`` -> ``"shift"`` on the CPU backend (XLA:CPU's grouped convolution is slow) and
    ``"lax"`` on GPU/TPU (cuDNN / the TPU convolution units run it well)."""
    return _resolve_impl(impl, DEPTHWISE_IMPLS, "shift", "depthwise_impl")


class _ConvLayer(nn.Module):
    """What ``Conv`` and ``DepthwiseConv`` share: ``nn.Conv``'s keyword attributes, its
    parameters (``kernel``, then ``bias`` when ``use_bias``) and its dtype promotion."""

    _: dataclasses.KW_ONLY
    padding: Any = "SAME"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    def _window(self, x) -> tuple[int, int]:
        """(kh, kw) from ``kernel_size``, after checking that x is (N, H, W, C)."""
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (N, H, W, C); got {jnp.shape(x)}"
            )
        ks = self.kernel_size
        ks = (ks, ks) if isinstance(ks, int) else tuple(ks)
        if len(ks) != 2:
            raise ValueError(f"kernel_size must be an int or (kh, kw); got {self.kernel_size!r}")
        return ks

    def _params(self, x, kernel_shape):
        """``x``, ``kernel`` and ``bias`` (None without ``use_bias``), promoted to ``dtype``."""
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, kernel_shape[-1:], self.param_dtype)
            if self.use_bias
            else None
        )
        return promote_dtype(x, kernel, bias, dtype=self.dtype)

    @staticmethod
    def _add_bias(y, bias):
        return y if bias is None else y + bias.reshape(1, 1, 1, -1)


class Conv(_ConvLayer):
    """2-D convolution layer, NHWC in and out, same parameters as ``nn.Conv``.

    Attributes:
      features: output channels C_out.
      kernel_size: (kh, kw) or an int.
      strides: int or (sh, sw).
      use_bias: add a learned (C_out,) bias.
      impl: "fast" (``conv2d_fast``: hand-written GEMM kernel gradient), "lax"
        (``lax.conv_general_dilated`` and its automatic gradient, exactly ``nn.Conv``) or
        "onednn" (``jaxcnn.ops.onednn.conv2d_onednn``: forward and both gradients in oneDNN,
        float32 on CPU; falls back to "fast" where oneDNN is not installed). Models resolve
        "auto" with :func:`resolve_conv_impl`.
      padding (keyword-only): "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).
      dtype (keyword-only): compute dtype (None: promote input and params, like ``nn.Conv``);
        products accumulate in float32.
      param_dtype (keyword-only): dtype of ``kernel`` and ``bias``.
      kernel_init / bias_init (keyword-only): as in ``nn.Conv`` (LeCun normal, zeros).
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    use_bias: bool = True
    impl: str = "fast"

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C_in) -> (N, Ho, Wo, features)."""
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"impl must be one of {CONV_IMPLS}; got {self.impl!r}")
        ks = self._window(x)
        x, kernel, bias = self._params(x, (*ks, jnp.shape(x)[-1], self.features))
        if self.impl == "fast":
            y = conv2d_fast(x, kernel, self.strides, self.padding)
        elif self.impl == "onednn":
            from jaxcnn.ops.onednn import conv2d_onednn

            return conv2d_onednn(x, kernel, self.strides, self.padding, bias=bias)
        else:
            s = self.strides
            s = (s, s) if isinstance(s, int) else tuple(s)
            pad = self.padding
            if not isinstance(pad, str):
                pad = resolve_padding(pad, jnp.shape(x)[1:3], ks, s)
            y = lax.conv_general_dilated(
                x, kernel, s, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        return self._add_bias(y, bias)


class DepthwiseConv(_ConvLayer):
    """Depthwise 2-D convolution, NHWC in and out, same parameters as
    ``nn.Conv(C, kernel_size, feature_group_count=C, use_bias=...)``.

    Attributes:
      kernel_size: (kh, kw) or an int.
      strides: int or (sh, sw).
      use_bias: add a learned (C,) bias.
      impl: "shift" (shifted multiply-adds, ``jaxcnn.ops.depthwise.depthwise_conv2d``), "lax"
        (``lax.conv_general_dilated`` with ``feature_group_count=C``) or "auto" (shift on CPU).
      padding / dtype / param_dtype / kernel_init / bias_init (keyword-only): as in ``Conv``.
    """

    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    use_bias: bool = False
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C) -> (N, Ho, Wo, C)."""
        impl = resolve_depthwise_impl(self.impl)
        ks = self._window(x)
        x, kernel, bias = self._params(x, (*ks, 1, jnp.shape(x)[-1]))
        fn = depthwise_conv2d if impl == "shift" else depthwise_conv2d_lax
        return self._add_bias(fn(x, kernel, self.strides, self.padding), bias)


def max_pool_2x2(x, impl: str = "fast"):
    """2x2 max pooling with stride 2 (VALID: an odd last row/column is dropped).

    Same values and gradient as ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``, which
    ``impl="lax"`` calls. Any other impl ("fast", "onednn") uses
    :func:`jaxcnn.ops.pool.max_pool_2x2`: a reshape-max whose hand-written gradient is one
    elementwise pass instead of XLA's select-and-scatter, which is slow on CPU. Both send a
    window's gradient to its first maximum (ties, such as all-zero windows after a ReLU, are
    not split).

    Args:
      x: (N, H, W, C) with H, W >= 2.
      impl: "lax", or "fast"/"onednn" (a resolved ``conv_impl``).

    Returns:
      (N, H // 2, W // 2, C).
    """
    if impl == "lax":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    return pool_2x2_first_max(x)


class BatchNormNet(nn.Module):
    """Base of the BatchNorm networks and blocks: their shared keyword-only attributes and
    their BatchNorm layer (``bn``).

    Attributes (keyword-only; a family may change the defaults):
      bn_momentum: running = momentum * running + (1 - momentum) * batch (0.9 is PyTorch's
        0.1 in its convention).
      bn_epsilon: added to the variance (1e-5, PyTorch's).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); BatchNorm statistics are still reduced in
        float32 and the logits are float32.
      param_dtype: dtype of the parameters (float32).
    """

    _: dataclasses.KW_ONLY
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    shared_fields = ("bn_momentum", "bn_epsilon", "dtype", "param_dtype")  # not a field

    def bn(self, train: bool, name: str, zero_scale: bool = False) -> nn.BatchNorm:
        """A BatchNorm submodule ``name`` with these settings (call it from a compact method);
        ``zero_scale`` starts its scale at 0. ``train`` uses batch statistics."""
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init(),
            name=name,
        )

    def bn_relu(self, train: bool, name: str, fused: bool, relu: bool = True,
                zero_scale: bool = False, pool: bool = False, native: bool = False) -> Callable:
        """BatchNorm submodule ``name``, then ReLU (``relu=True``), then 2x2 max pooling
        (``pool=True``, needs ``relu``), as one callable.

        ``fused=True`` uses :class:`FusedBatchNorm` (the variables and function of
        ``nn.BatchNorm``; a hand-written backward pass that is faster on XLA:CPU), with its
        training pass in the native kernels when ``native`` (see ``FusedBatchNorm.native``);
        else ``nn.BatchNorm``, ``nn.relu`` and ``nn.max_pool``. ``zero_scale`` starts the scale
        at 0.
        """
        if pool and not relu:
            raise ValueError("bn_relu: pool=True needs relu=True")
        if not fused:
            layer = self.bn(train, name, zero_scale=zero_scale)
            if not relu:
                return layer
            if pool:
                return lambda x: nn.max_pool(nn.relu(layer(x)), (2, 2), strides=(2, 2))
            return lambda x: nn.relu(layer(x))
        return FusedBatchNorm(
            use_running_average=not train, relu=relu, pool=pool, zero_scale=zero_scale,
            native=native, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
            param_dtype=self.param_dtype, name=name,
        )

    def shared_options(self) -> dict:
        """The attributes named in ``shared_fields``, to hand on to child blocks:
        ``Block(..., **self.shared_options())``."""
        return {name: getattr(self, name) for name in self.shared_fields}


class FusedBatchNorm(nn.Module):
    """BatchNorm (+ ReLU) over NHWC inputs with the variables of ``nn.BatchNorm``.

    Parameters ``scale`` (unless ``use_scale=False``) and ``bias`` and ``batch_stats`` ``mean``
    and ``var`` have the names, shapes and meaning of ``nn.BatchNorm``'s (checkpoints are
    interchangeable); in training the output and the running averages equal
    ``nn.BatchNorm(use_fast_variance=True)``'s, and the gradient comes from
    :func:`jaxcnn.ops.batchnorm.batch_norm_train` (fewer passes over the activation). With
    ``use_running_average`` it normalises with the running statistics, as ``nn.BatchNorm``
    does: ``(x - mean) * scale / sqrt(var + epsilon) + bias``.

    Attributes:
      use_running_average: normalise with the running statistics (evaluation).
      relu: apply ReLU to the output.
      pool: then 2x2 max pooling with stride 2 (needs ``relu`` and even H, W): the output is
        (N, H/2, W/2, C), the gradient goes to each window's first maximum, and in training
        :func:`jaxcnn.ops.batchnorm.batch_norm_relu_pool_train` never writes the
        full-resolution activation.
      use_scale: learn a scale; ``False`` fixes it at 1, with no ``scale`` parameter (the
        variables of ``nn.BatchNorm(use_scale=False)``).
      zero_scale: initialise the scale to 0 (else 1); needs ``use_scale``.
      native: in training, compute with the C++ kernels of
        :mod:`jaxcnn.ops.onednn.batchnorm` (fewer passes over memory than XLA:CPU's fusions;
        the ``onednn`` extra) where they run (float32 on the CPU), else in pure JAX. The same
        function either way; models set it with ``conv_impl="onednn"``.
      momentum: running = momentum * running + (1 - momentum) * batch.
      epsilon: added to the variance.
      dtype: dtype of the output (statistics are float32); param_dtype: of scale and bias.
    """

    use_running_average: bool = False
    relu: bool = True
    pool: bool = False
    use_scale: bool = True
    zero_scale: bool = False
    native: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C) -> same shape, or (N, H/2, W/2, C) with ``pool``."""
        if self.native:  # the C++ kernels where they run, else these same pure-JAX functions
            from jaxcnn.ops.onednn import batchnorm as ops
            train_fn, pool_fn = ops.batch_norm_train_native, ops.batch_norm_relu_pool_train_native
        else:
            from jaxcnn.ops import batchnorm as ops
            train_fn, pool_fn = ops.batch_norm_train, ops.batch_norm_relu_pool_train

        if self.pool and not self.relu:
            raise ValueError("FusedBatchNorm: pool=True needs relu=True")
        if self.zero_scale and not self.use_scale:
            raise ValueError("FusedBatchNorm: zero_scale=True needs use_scale=True")
        c = jnp.shape(x)[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        init = nn.initializers
        if self.use_scale:
            scale_init = init.zeros_init() if self.zero_scale else init.ones_init()
            scale = self.param("scale", scale_init, (c,), self.param_dtype)
        bias = self.param("bias", init.zeros_init(), (c,), self.param_dtype)
        x = jnp.asarray(x, self.dtype or jnp.result_type(x, bias))
        if self.use_running_average:
            a = lax.rsqrt(ra_var.value + self.epsilon)
            if self.use_scale:
                a = scale.astype(jnp.float32) * a
            y = (x.astype(jnp.float32) - ra_mean.value) * a + bias.astype(jnp.float32)
            y = (jnp.maximum(y, 0.0) if self.relu else y).astype(x.dtype)
            return pool_2x2_first_max(y) if self.pool else y
        if not self.use_scale:  # a constant 1: its gradient is computed and dropped
            scale = jnp.ones((c,), bias.dtype)
        if self.pool:
            y, mean, var = pool_fn(x, scale, bias, self.epsilon)
        else:
            y, mean, var = train_fn(x, scale, bias, self.epsilon, self.relu)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
            ra_var.value = m * ra_var.value + (1.0 - m) * var
        return y


def pooled_classifier(
    x,
    num_classes: int,
    return_features: bool = False,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    dropout: float | None = None,
    train: bool = False,
):
    """Global average pooling, then the classifier ``head`` (call it from a compact method).

    x: (N, H, W, C) -> logits (N, num_classes) float32; with ``return_features`` the pooled
    (N, C) float32 features instead. The pooling is in float32; ``dropout`` (a rate) adds a
    Dropout ``head_dropout`` before ``head`` (active when ``train``, with
    ``rngs={"dropout": key}``).
    """
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if return_features:
        return x
    if dropout is not None:
        x = nn.Dropout(dropout, deterministic=not train, name="head_dropout")(x)
    x = nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype, name="head")(x.astype(dtype))
    return x.astype(jnp.float32)
