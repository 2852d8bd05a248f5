"""The layers the course's models are drawn with, and the one place that picks their kernels.

A model says ``Conv -> BatchNorm -> ReLU -> MaxPool``; each layer here asks
:mod:`jaxcnn.ops.backend` (one setting: ``backend.use(...)``, ``FitConfig(backend=...)`` or
``$JAXCNN_BACKEND``) which kernels compute it, when the model is traced. Every backend gives
the same parameters (names, shapes: interchangeable with ``nn.Conv`` / ``nn.BatchNorm``
checkpoints and ported weights) and the same function (tested model by model):

* ``Conv``: 2-D convolution. lax: ``lax.conv_general_dilated`` (exactly ``nn.Conv``); fast: the
  kernel gradient as one GEMM (``jaxcnn.ops.fast_conv``); onednn: forward and both gradients in
  oneDNN (``jaxcnn.ops.onednn``).
* ``DepthwiseConv``: one filter per channel (``nn.Conv(C, feature_group_count=C)``'s
  parameters). lax: XLA's grouped convolution; fast / onednn: shifted multiply-adds
  (``jaxcnn.ops.depthwise``, 5-17x faster on XLA:CPU).
* ``max_pool_2x2``: 2x2 / stride 2 max pooling. lax: ``nn.max_pool``; fast / onednn: a reshape
  and a max whose gradient is one elementwise mask instead of XLA's select-and-scatter.
* ``batch_norm`` (and ``BatchNormNet.bn_relu``): BatchNorm [-> ReLU [-> 2x2 max pool] or
  -> GELU].
  lax: ``nn.BatchNorm``, ``nn.relu``, ``nn.max_pool``; fast: ``FusedBatchNorm``, one op with a
  hand-written backward pass (``jaxcnn.ops.batchnorm``); onednn: BatchNorm+ReLU in the C++
  kernels of ``jaxcnn.ops.onednn.batchnorm`` with a following max pool folded in, while a bare
  BatchNorm (before a residual add) stays in XLA, which fuses it with what follows (in C++
  that measured 2.5% slower for resnet20), and BatchNorm+GELU is ``FusedBatchNorm``'s.

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

from jaxcnn.ops import _checks, backend
from jaxcnn.ops import batchnorm as bn_ops
from jaxcnn.ops.depthwise import depthwise_conv2d, depthwise_conv2d_lax
from jaxcnn.ops.fast_conv import conv2d_fast, resolve_padding
from jaxcnn.ops.pool import max_pool_2x2 as pool_2x2_first_max

__all__ = [
    "BatchNormNet",
    "Conv",
    "DepthwiseConv",
    "FusedBatchNorm",
    "batch_norm",
    "max_pool_2x2",
    "pooled_classifier",
]

# Conv's precision -> lax's (XLA:CPU computes float32 products whatever it is told; the fast
# backend too, its convolutions are XLA's).
_LAX_PRECISION = {None: None, "float32": lax.Precision.HIGHEST, "bfloat16": lax.Precision.DEFAULT}


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

    The kernels come from :func:`jaxcnn.ops.backend.resolve` (module docstring); products
    accumulate in float32.

    Attributes:
      features: output channels C_out.
      kernel_size: (kh, kw) or an int.
      strides: int or (sh, sw).
      use_bias: add a learned (C_out,) bias.
      padding (keyword-only): "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).
      dtype (keyword-only): compute dtype (None: promote input and params, like ``nn.Conv``).
      param_dtype (keyword-only): dtype of ``kernel`` and ``bias``.
      kernel_init / bias_init (keyword-only): as in ``nn.Conv`` (LeCun normal, zeros).
      precision (keyword-only): the precision of this layer's products, like ``nn.Conv``'s:
        None (JAX's matmul precision where the model is traced, e.g.
        ``FitConfig.matmul_precision``), ``"float32"`` or ``"bfloat16"`` (operands rounded to
        bfloat16, float32 accumulation). ``"float32"`` keeps a layer exact whose outputs are
        small differences of large inputs, which rounded operands would drown.
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    use_bias: bool = True
    precision: str | None = dataclasses.field(default=None, kw_only=True)

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C_in) -> (N, Ho, Wo, features)."""
        _checks.check_precision(self.precision, "Conv precision")
        kernels = backend.resolve()
        ks = self._window(x)
        x, kernel, bias = self._params(x, (*ks, jnp.shape(x)[-1], self.features))
        if kernels == "onednn":  # falls back to conv2d_fast where oneDNN cannot run
            from jaxcnn.ops.onednn import conv2d_onednn

            return conv2d_onednn(x, kernel, self.strides, self.padding, bias=bias,
                                 precision=self.precision)
        if kernels == "fast":
            y = conv2d_fast(x, kernel, self.strides, self.padding)
        else:
            s = self.strides
            s = (s, s) if isinstance(s, int) else tuple(s)
            pad = self.padding
            if not isinstance(pad, str):
                pad = resolve_padding(pad, jnp.shape(x)[1:3], ks, s)
            y = lax.conv_general_dilated(
                x, kernel, s, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=_LAX_PRECISION[self.precision],
            )
        return self._add_bias(y, bias)


class DepthwiseConv(_ConvLayer):
    """Depthwise 2-D convolution, NHWC in and out, same parameters as
    ``nn.Conv(C, kernel_size, feature_group_count=C, use_bias=...)``.

    lax: XLA's grouped convolution; fast / onednn: shifted multiply-adds
    (``jaxcnn.ops.depthwise.depthwise_conv2d``, 5-17x faster on XLA:CPU).

    Attributes:
      kernel_size: (kh, kw) or an int.
      strides: int or (sh, sw).
      use_bias: add a learned (C,) bias.
      padding / dtype / param_dtype / kernel_init / bias_init (keyword-only): as in ``Conv``.
    """

    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        """x: (N, H, W, C) -> (N, Ho, Wo, C)."""
        ks = self._window(x)
        x, kernel, bias = self._params(x, (*ks, 1, jnp.shape(x)[-1]))
        fn = depthwise_conv2d_lax if backend.resolve() == "lax" else depthwise_conv2d
        return self._add_bias(fn(x, kernel, self.strides, self.padding), bias)


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 (VALID: an odd last row/column is dropped).

    Same values and gradient as ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``, which the
    lax backend calls; the others use :func:`jaxcnn.ops.pool.max_pool_2x2`, a reshape-max
    whose hand-written gradient is one elementwise pass instead of XLA's select-and-scatter
    (slow on CPUs). Both send a window's gradient to its first maximum (ties, such as
    all-zero windows after a ReLU, are not split).

    Args:
      x: (N, H, W, C) with H, W >= 2.

    Returns:
      (N, H // 2, W // 2, C).
    """
    if backend.resolve() == "lax":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    return pool_2x2_first_max(x)


def batch_norm(train: bool, name: str, *, relu: bool = False, pool: bool = False,
               gelu: bool = False, use_scale: bool = True, zero_scale: bool = False,
               momentum: float = 0.9, epsilon: float = 1e-5, dtype: Any = None,
               param_dtype: Any = jnp.float32) -> Callable:
    """BatchNorm submodule ``name`` [-> ReLU [-> 2x2 max pool]] as one callable (call it from
    a compact method); the variables of ``nn.BatchNorm(use_scale=use_scale)`` on every backend.

    Args:
      train: normalise with the batch statistics and update the running ones (needs
        ``mutable=["batch_stats"]``); else use the running statistics.
      name: the BatchNorm's name in the parameter tree.
      relu: then ReLU. pool: then 2x2 / stride 2 max pooling (needs ``relu``).
      gelu: then the exact (erf) GELU instead (lax: ``nn.gelu(approximate=False)``; the others
        fuse it into the BatchNorm, whose backward pass then keeps only the layer's input).
      use_scale: learn a scale (else fixed at 1). zero_scale: start the scale at 0.
      momentum: running = momentum * running + (1 - momentum) * batch. epsilon: added to the
        variance. dtype / param_dtype: of the output / of scale and bias.

    x: (N, H, W, C) -> (N, H, W, C), or (N, H // 2, W // 2, C) with ``pool``.
    """
    if pool and not relu:
        raise ValueError("batch_norm: pool=True needs relu=True")
    if gelu and relu:
        raise ValueError("batch_norm: pass relu=True or gelu=True, not both")
    settings = dict(momentum=momentum, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype)
    kernels = backend.resolve()
    if kernels == "lax":
        init = nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init()
        layer = nn.BatchNorm(use_running_average=not train, use_scale=use_scale,
                             scale_init=init, name=name, **settings)
        if gelu:
            return lambda x: nn.gelu(layer(x), approximate=False)
        if not relu:
            return layer
        if pool:
            return lambda x: nn.max_pool(nn.relu(layer(x)), (2, 2), strides=(2, 2))
        return lambda x: nn.relu(layer(x))

    def layer(x):
        # native: the C++ kernels for BatchNorm+ReLU; a bare BatchNorm stays in XLA (fused there
        # with the residual add or activation that follows). The pool folds into the native
        # kernel (even H, W); in pure JAX that fusion measured slower, so it stays separate.
        native = kernels == "onednn" and relu
        fold = native and pool and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
        y = FusedBatchNorm(use_running_average=not train, relu=relu, pool=fold, gelu=gelu,
                           use_scale=use_scale, zero_scale=zero_scale, native=native,
                           name=name, **settings)(x)
        return pool_2x2_first_max(y) if pool and not fold else y

    return layer


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

    def bn_relu(self, train: bool, name: str, relu: bool = True, pool: bool = False,
                zero_scale: bool = False) -> Callable:
        """BatchNorm submodule ``name`` with these settings, then ReLU (``relu=True``), then
        2x2 max pooling (``pool=True``), as one callable: :func:`batch_norm`. ``zero_scale``
        starts the scale at 0."""
        return batch_norm(train, name, relu=relu, pool=pool, zero_scale=zero_scale,
                          momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                          param_dtype=self.param_dtype)

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
      gelu: apply the exact GELU to the output instead (needs ``relu=False``, ``native=False``;
        computed in float32, and in training its slope is recomputed in the backward pass
        rather than stored).
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
        function either way; :func:`batch_norm` sets it on the onednn backend.
      momentum: running = momentum * running + (1 - momentum) * batch.
      epsilon: added to the variance.
      dtype: dtype of the output (statistics are float32); param_dtype: of scale and bias.
    """

    use_running_average: bool = False
    relu: bool = True
    pool: bool = False
    gelu: bool = False
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
            train_fn, pool_fn = bn_ops.batch_norm_train, bn_ops.batch_norm_relu_pool_train

        if self.pool and not self.relu:
            raise ValueError("FusedBatchNorm: pool=True needs relu=True")
        if self.gelu and (self.relu or self.native):
            raise ValueError("FusedBatchNorm: gelu=True needs relu=False and native=False")
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
            y = bn_ops.activate(y, "relu" if self.relu else "gelu" if self.gelu else "none")
            y = y.astype(x.dtype)
            return pool_2x2_first_max(y) if self.pool else y
        if not self.use_scale:  # a constant 1: its gradient is computed and dropped
            scale = jnp.ones((c,), bias.dtype)
        if self.pool:
            y, mean, var = pool_fn(x, scale, bias, self.epsilon)
        elif self.gelu:
            y, mean, var = train_fn(x, scale, bias, self.epsilon, gelu=True)
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
