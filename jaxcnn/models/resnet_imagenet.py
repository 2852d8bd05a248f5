"""ImageNet ResNets: resnet18 / resnet34 (basic blocks) and resnet50 (bottleneck blocks).

Layout (shapes for (N, 224, 224, 3); 32x32 works too, every map then ends at 1x1)::

    stem_conv 7x7 64 /2 pad 3 -> stem_bn -> ReLU        (N, 112, 112, 64)
    max pool 3x3 /2 pad 1                               (N, 56, 56, 64)
    stage1 .. stage4: blocks of width 64/128/256/512,
      the first block of stages 2-4 with stride 2       (N, 7, 7, 512 * expansion)
    global average pool                                 (N, 512 * expansion)  <- ``features``
    head Dense(num_classes)                             (N, num_classes) float32

Blocks per stage: resnet18 (2, 2, 2, 2), resnet34 (3, 4, 6, 3) with ``BasicBlock``
(expansion 1); resnet50 (3, 4, 6, 3) with ``Bottleneck`` (expansion 4). Shortcuts are
projections (option B: 1x1 conv + BN) wherever the shape changes, as in torchvision and Keras.

Names follow ``jaxcnn.models.resnet`` (``stem_conv``, ``stem_bn``, ``stage{s}_block{b}`` holding
``conv{i}``/``bn{i}``/``proj_conv``/``proj_bn``, ``head``). A Keras ``ResNet50`` h5 file maps
one to one: ``conv1_conv``/``conv1_bn`` -> ``stem_conv``/``stem_bn``;
``conv{s+1}_block{b}_{i}_conv``/``_{i}_bn`` -> ``stage{s}_block{b}`` / ``conv{i}``/``bn{i}``
(``i`` = 0 -> ``proj_conv``/``proj_bn``); ``predictions`` -> ``head``; BN gamma/beta ->
params ``scale``/``bias``, moving_mean/moving_variance -> batch_stats ``mean``/``var``.
Torchvision: ``conv1``/``bn1`` -> stem, ``layer{s}.{b-1}.conv{i}``/``bn{i}``,
``downsample.0``/``.1`` -> ``proj_conv``/``proj_bn``, ``fc`` -> ``head`` (kernels transposed
OIHW -> HWIO).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import BatchNormNet, pooled_classifier
from jaxcnn.models.registry import register, register_variant
from jaxcnn.models.resnet import PAD1, BasicBlock, he_normal

KERAS_BN_EPSILON = 1.001e-5


class Bottleneck(BatchNormNet):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), with a skip connection (post-activation).

    ``x`` (N, H, W, C) -> (N, ceil(H / strides), ceil(W / strides), 4 * features)::

        y = BN1(conv1 1x1 F) -> ReLU -> BN2(conv2 3x3 F pad 1) -> ReLU -> BN3(conv3 1x1 4F)
        out = ReLU(y + shortcut(x))

    The stride sits on ``conv2`` (the 3x3; "ResNet v1.5", torchvision, the default) or, with
    ``stride_in_1x1=True``, on ``conv1`` (the original v1 and Keras' ``ResNet50``: a strided 1x1
    conv drops 3/4 of the positions before any 3x3 sees them). ``shortcut(x)`` is ``x`` when the
    shape is unchanged, else ``proj_conv`` (1x1, stride) -> ``proj_bn``.

    ``zero_init_residual`` starts ``bn3``'s scale at 0: the block is ``ReLU(shortcut(x))`` at
    init. ``conv_bias`` adds biases to every conv (Keras' layout).
    """

    features: int
    strides: int = 1
    expansion: int = 4
    stride_in_1x1: bool = False
    zero_init_residual: bool = False
    conv_bias: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv_kw = dict(
            use_bias=self.conv_bias,
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        s = (self.strides,) * 2
        s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
        out_features = self.features * self.expansion
        y = nn.Conv(self.features, (1, 1), s1, name="conv1", **conv_kw)(x)
        y = nn.relu(self.bn(train, "bn1")(y))
        y = nn.Conv(self.features, (3, 3), s3, padding=PAD1, name="conv2", **conv_kw)(y)
        y = nn.relu(self.bn(train, "bn2")(y))
        y = nn.Conv(out_features, (1, 1), name="conv3", **conv_kw)(y)
        y = self.bn(train, "bn3", zero_scale=self.zero_init_residual)(y)
        if self.strides == 1 and x.shape[-1] == out_features:
            residual = x
        else:
            residual = nn.Conv(out_features, (1, 1), s, name="proj_conv", **conv_kw)(x)
            residual = self.bn(train, "proj_bn")(residual)
        return nn.relu(y + residual)


class ResNet(BatchNormNet):
    """An ImageNet-layout ResNet (see the module docstring for the layout and names).

    Attributes:
      num_classes: output width.
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3).
      bottleneck: ``Bottleneck`` blocks (expansion 4) instead of ``BasicBlock``.
      widths: per-stage block widths (inner width for bottlenecks); the stem has 64.
      stride_in_1x1: bottleneck stride on the first 1x1 conv (v1, Keras) instead of the 3x3.
      conv_bias: biases on every conv (Keras' layout; torchvision has none).
      zero_init_residual: every block's last BN scale starts at 0 (blocks are identities).
      bn_momentum / bn_epsilon: BatchNorm settings (0.9 / 1e-5; Keras' epsilon is 1.001e-5).
      dtype: compute dtype; params stay ``param_dtype`` (float32), logits are float32.
    """

    num_classes: int = 1000
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    bottleneck: bool = True
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stride_in_1x1: bool = False
    conv_bias: bool = False
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C) float -> logits (N, num_classes) float32, or pooled features.

        ``train=True`` uses batch statistics and needs ``mutable=["batch_stats"]``.
        """
        if x.ndim != 4:
            raise ValueError(f"ResNet expects x of shape (N, H, W, C), got {x.shape}")
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"stage_sizes {self.stage_sizes} and widths {self.widths} differ in length"
            )
        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(
            64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=self.conv_bias,
            kernel_init=he_normal, name="stem_conv", dtype=self.dtype, param_dtype=self.param_dtype,
        )(x)
        x = nn.relu(self.bn(train, "stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=PAD1)
        block_kw = dict(
            zero_init_residual=self.zero_init_residual,
            conv_bias=self.conv_bias,
            **self.shared_options(),
        )
        for s, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True), 1):
            for b in range(1, n_blocks + 1):
                strides = 2 if (s > 1 and b == 1) else 1
                name = f"stage{s}_block{b}"
                if self.bottleneck:
                    block = Bottleneck(
                        width, strides, stride_in_1x1=self.stride_in_1x1, name=name, **block_kw
                    )
                else:
                    block = BasicBlock(width, strides, shortcut="B", name=name, **block_kw)
                x = block(x, train)
        return pooled_classifier(
            x, self.num_classes, return_features, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> (N, widths[-1] * expansion) float32 pooled features."""
        return self(x, train=train, return_features=True)


def _basic_resnet(name: str, stage_sizes: tuple[int, ...], doc: str):
    """Register an ImageNet ResNet of basic blocks (resnet18, resnet34)."""
    options = ("zero_init_residual", "bn_momentum", "bn_epsilon", "dtype")
    return register_variant(name, ResNet, doc, options, stage_sizes=stage_sizes, bottleneck=False)


resnet18 = _basic_resnet("resnet18", (2, 2, 2, 2), """ResNet-18 (basic blocks, 2-2-2-2).
    1000 classes: **11,689,512** params (torchvision's count, no conv bias), +9,600 BatchNorm
    running statistics. Features (N, 512).""")

resnet34 = _basic_resnet("resnet34", (3, 4, 6, 3), """ResNet-34 (basic blocks, 3-4-6-3).
    1000 classes: **21,797,672** params (torchvision's count, no conv bias), +17,024 BatchNorm
    running statistics. Features (N, 512).""")


@register("resnet50")
def resnet50(
    num_classes: int = 1000,
    keras_compat: bool = False,
    stride_in_1x1: bool | None = None,
    conv_bias: bool | None = None,
    bn_epsilon: float | None = None,
    zero_init_residual: bool = False,
    bn_momentum: float = 0.9,
    dtype: Any = jnp.float32,
) -> ResNet:
    """ResNet-50 (bottleneck blocks, 3-4-6-3). Features (N, 2048).

    Defaults: v1.5 (stride on the 3x3 conv), no conv bias, BN epsilon 1e-5: torchvision's
    ``resnet50`` layout, 1000 classes: **25,557,032** params + 53,120 BatchNorm running
    statistics = 25,610,152 counted the Keras way.

    ``keras_compat=True`` reproduces Keras' ``ResNet50`` exactly: ``stride_in_1x1=True`` (v1),
    ``conv_bias=True`` and ``bn_epsilon=1.001e-5``; 1000 classes: 25,583,592 params + 53,120
    running statistics = **25,636,712**, Keras' reported total. Each of the three can also be
    set on its own (an explicit value overrides ``keras_compat``'s).
    """
    return ResNet(
        num_classes=num_classes,
        stage_sizes=(3, 4, 6, 3),
        bottleneck=True,
        stride_in_1x1=keras_compat if stride_in_1x1 is None else stride_in_1x1,
        conv_bias=keras_compat if conv_bias is None else conv_bias,
        bn_epsilon=(KERAS_BN_EPSILON if keras_compat else 1e-5) if bn_epsilon is None
        else bn_epsilon,
        zero_init_residual=zero_init_residual,
        bn_momentum=bn_momentum,
        dtype=dtype,
    )
