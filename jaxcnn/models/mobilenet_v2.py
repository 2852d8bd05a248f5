"""MobileNetV2 (Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks") in Flax linen.

A faithful copy of Keras' ``keras.applications.MobileNetV2`` (so its ImageNet weights port
exactly: ``jaxcnn.pretrained.load("mobilenet_v2")``). Every convolution is bias-free and
followed by BatchNorm (``epsilon=1e-3``, Keras ``momentum=0.999``: the same number in Flax's
convention, running = momentum * running + (1 - momentum) * batch)::

    stem: Conv3x3/2 (32) -> BN -> ReLU6                                   224 -> 112
    17 inverted residual blocks in 7 stages (expansion t, out c, repeats n, stride s):
        (1,  16, 1, 1)  (6,  24, 2, 2)  (6,  32, 3, 2)  (6,  64, 4, 2)
        (6,  96, 3, 1)  (6, 160, 3, 2)  (6, 320, 1, 1)                    112 -> 7
      block: [Conv1x1 expand (t * C_in) -> BN -> ReLU6] (absent when t == 1)
             -> depthwise Conv3x3/s -> BN -> ReLU6 -> Conv1x1 project -> BN (linear bottleneck)
             (+ input when s == 1 and C_in == C_out)
    head: Conv1x1 (1280) -> BN -> ReLU6 -> global average pool -> Dense (``head``, with bias)

There is no dropout (Keras has none). 1000 classes, ``alpha=1.0``: 3,504,872 trainable params
(``params``) + 34,112 BatchNorm running statistics (``batch_stats``) = **3,538,984**, Keras'
``count_params()``.

Padding is TensorFlow's "SAME" computed from the input size
(:func:`jaxcnn.ops.shapes.same_padding`): asymmetric (0, 1) on the stride-2 3x3
layers at even sizes. Keras writes the strided depthwise layers as ``ZeroPadding2D(correct_pad)``
followed by a VALID convolution; that is the same padding for every input size.

Width multiplier ``alpha`` scales every layer as Keras does: the stem to
``make_divisible(32 * alpha)``, block outputs to ``make_divisible(int(c * alpha))``, and the
head conv to ``make_divisible(1280 * alpha)`` only when ``alpha > 1`` (it stays 1280 otherwise).

Parameter names (``stem``, ``block0`` .. ``block16`` with ``expand`` / ``depthwise`` /
``project``, each a ``conv`` + ``bn``, ``head_conv``, ``head``) follow
``jaxcnn.models.efficientnet_lite``: both are built from the ``ConvBN`` and ``MBConv`` modules of
:mod:`jaxcnn.models.mbconv`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import pooled_classifier
from jaxcnn.models.mbconv import ConvBN, MBConv, MobileNetBase
from jaxcnn.models.registry import register

__all__ = ["MOBILENET_V2_STAGES", "MobileNetV2", "make_divisible"]

# (expansion, out_channels, repeats, first_stride) per stage, Table 2 of the paper.
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

KERAS_BN_MOMENTUM = 0.999
KERAS_BN_EPSILON = 1e-3


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (at least ``divisor``),
    going one step up when rounding would lose more than 10% (the MobileNet rule).

    ``make_divisible(32 * 0.35) == 16``, ``make_divisible(24 * 0.75) == 24``,
    ``make_divisible(1280 * 1.4) == 1792``.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


@register("mobilenet_v2")
class MobileNetV2(MobileNetBase):
    """MobileNetV2, Keras' layout (see the module docstring).

    Attributes:
      num_classes: width of the classifier ``head`` (1000 for the ImageNet port).
      alpha: width multiplier (Keras ships ImageNet weights for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4;
        ``jaxcnn.pretrained`` ports 1.0).
      include_top: with False there is no ``head`` and ``num_classes`` is unused: ``__call__``
        returns the last feature map (N, H/32, W/32, 1280) float32, or (N, 1280) with
        ``pooling="avg"|"max"`` (Keras' ``include_top=False``).
      pooling: None, "avg" or "max"; only used with ``include_top=False``.
      stages: (expansion, out, repeats, stride) per stage.
      bn_momentum / bn_epsilon: Keras' 0.999 and 1e-3.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); params float32; outputs float32.

    Any input size with H, W >= 32 works (the ImageNet weights were trained at 224x224); the
    spatial size shrinks by 32 (rounded up at every stride-2 layer).
    """

    num_classes: int = 1000
    alpha: float = 1.0
    include_top: bool = True
    pooling: str | None = None
    stages: tuple[tuple[int, int, int, int], ...] = MOBILENET_V2_STAGES
    _: dataclasses.KW_ONLY
    bn_momentum: float = KERAS_BN_MOMENTUM
    bn_epsilon: float = KERAS_BN_EPSILON

    def _check(self, x) -> None:
        if x.ndim != 4:
            raise ValueError(f"MobileNetV2 expects x of shape (N, H, W, C); got {x.shape}")
        if x.shape[1] < 32 or x.shape[2] < 32:
            raise ValueError(f"MobileNetV2 needs H, W >= 32; got x of shape {x.shape}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
            self.alpha > 0
        ):
            raise ValueError(f"alpha must be a positive number (e.g. 1.0); got {self.alpha!r}")
        if self.pooling not in (None, "avg", "max"):
            raise ValueError(f"pooling must be None, 'avg' or 'max'; got {self.pooling!r}")

    @property
    def head_features(self) -> int:
        """Channels of the last conv: 1280, scaled only when ``alpha > 1``."""
        return make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, 3) float in [-1, 1] (``jaxcnn.pretrained.preprocess("mobilenet_v2",
        ...)``; 224x224 for ImageNet) -> logits (N, num_classes) float32.

        ``return_features=True`` gives the (N, 1280) globally average-pooled features feeding
        ``head`` (whatever ``include_top`` and ``pooling`` say). ``train=True`` uses batch
        statistics and needs ``mutable=["batch_stats"]``. With ``include_top=False`` see the
        class docstring.
        """
        self._check(x)
        kw = self.shared_options()
        x = jnp.asarray(x, self.dtype)
        x = ConvBN(make_divisible(32 * self.alpha), 3, 2, name="stem", **kw)(x, train)
        i = 0
        for expansion, out, repeats, stride in self.stages:
            for r in range(repeats):
                x = MBConv(
                    make_divisible(int(out * self.alpha)),
                    expansion,
                    3,
                    stride if r == 0 else 1,
                    name=f"block{i}",
                    **kw,
                )(x, train)
                i += 1
        x = ConvBN(self.head_features, 1, name="head_conv", **kw)(x, train)
        if not self.include_top and not return_features:
            if self.pooling == "max":
                return jnp.max(x, axis=(1, 2)).astype(jnp.float32)
            if self.pooling is None:
                return x.astype(jnp.float32)
        return pooled_classifier(
            x, self.num_classes, return_features or not self.include_top, dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def features(self, x, train: bool = False):
        """x: (N, H, W, 3) -> (N, 1280) float32 pooled features feeding ``head``."""
        return self(x, train=train, return_features=True)
