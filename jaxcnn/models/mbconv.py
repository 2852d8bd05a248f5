"""The building blocks of the mobile networks (MobileNetV2, EfficientNet-Lite): a conv-BN layer
with TensorFlow's "SAME" padding and the mobile inverted bottleneck (MBConv), without
squeeze-and-excitation.

Padding follows TensorFlow's "SAME" rule computed from the input size
(:func:`jaxcnn.ops.shapes.same_padding`), which is asymmetric on the stride-2 layers: at 224 px
it is (0, 1) for 3x3 and (1, 2) for 5x5 (PyTorch's symmetric padding would shift every later
feature map by a pixel and break ported weights).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import BatchNormNet, DepthwiseConv
from jaxcnn.ops.shapes import same_padding

__all__ = ["ConvBN", "MBConv", "MobileNetBase", "relu6"]


def relu6(x):
    """min(max(x, 0), 6), elementwise."""
    return jnp.clip(x, 0, 6)


class MobileNetBase(BatchNormNet):
    """Base of the mobile networks and their blocks: :class:`BatchNormNet` with TensorFlow's
    BatchNorm defaults.

    Attributes (keyword-only):
      bn_momentum / bn_epsilon: 0.99 and 1e-3 (TensorFlow's).
    """

    _: dataclasses.KW_ONLY
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3


class ConvBN(MobileNetBase):
    """Bias-free conv with TF-SAME padding, BatchNorm, optional ReLU6. NHWC in and out.

    Submodules: ``conv`` (kernel (k, k, C_in / groups, features)) and ``bn``.
    """

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x: (N, H, W, C_in) -> (N, ceil(H / stride), ceil(W / stride), features)."""
        pad = tuple(same_padding(self.kernel, stride=self.stride, size=n) for n in x.shape[1:3])
        if self.groups > 1 and self.groups == self.features == x.shape[-1]:
            # depthwise: the same (k, k, 1, C) kernel as nn.Conv(feature_group_count=C)
            x = DepthwiseConv(
                self.kernel,
                self.stride,
                padding=pad,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv",
            )(x)
        else:
            x = nn.Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=(self.stride, self.stride),
                padding=pad,
                feature_group_count=self.groups,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv",
            )(x)
        x = self.bn(train, "bn")(x)
        return relu6(x) if self.act else x


class MBConv(MobileNetBase):
    """Mobile inverted bottleneck without squeeze-excite (EfficientNet-Lite / MobileNetV2 block).

    Submodules: ``expand`` (ConvBN 1x1, absent when ``expand_ratio == 1``), ``depthwise``
    (ConvBN kxk, groups = channels), ``project`` (ConvBN 1x1, no activation).
    """

    out_channels: int
    expand_ratio: int = 6
    kernel: int = 3
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x: (N, H, W, C_in) -> (N, ceil(H / stride), ceil(W / stride), out_channels)."""
        kw = self.shared_options()
        c_in = x.shape[-1]
        h = x
        hidden = c_in * self.expand_ratio
        if self.expand_ratio != 1:
            h = ConvBN(hidden, 1, name="expand", **kw)(h, train)
        h = ConvBN(hidden, self.kernel, self.stride, groups=hidden, name="depthwise", **kw)(
            h, train
        )
        h = ConvBN(self.out_channels, 1, act=False, name="project", **kw)(h, train)
        if self.stride == 1 and c_in == self.out_channels:
            h = h + x
        return h
