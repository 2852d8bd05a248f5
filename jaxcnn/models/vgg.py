"""VGG (Simonyan and Zisserman, 2014): stacks of 3x3 convolutions; VGG16/19 and a CIFAR-sized mini.

Two 3x3 convolutions see a 5x5 window and three see 7x7, with fewer weights (2*9*C^2 or 3*9*C^2
against 25*C^2 or 49*C^2) and more non-linearities than one large kernel: the VGG lesson.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import BatchNormNet, Conv, max_pool_2x2
from jaxcnn.models.registry import register, register_variant

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG19_STAGES = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)
VGG_MINI_STAGES = ((32, 32), (64, 64), (128, 128, 128))


class VGGBlock(BatchNormNet):
    """One VGG stage: ``len(widths)`` x (conv 3x3 SAME [-> BatchNorm] -> ReLU), max pool 2x2 /2.

    ``x`` (N, H, W, C) -> (N, H // 2, W // 2, widths[-1]). Conv layers are ``conv{i}`` (with bias,
    as in the paper and torchvision's ``vgg*_bn``), BatchNorm layers ``bn{i}``.
    """

    widths: tuple[int, ...]
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, width in enumerate(self.widths, 1):
            x = Conv(width, (3, 3), padding="SAME", name=f"conv{i}", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
            if self.batch_norm:
                x = self.bn(train, f"bn{i}")(x)
            x = nn.relu(x)
        return max_pool_2x2(x)


class VGG(BatchNormNet):
    """A VGG network: VGG stages (``block1`` ... ``blockS``), then the top or the conv features.

    ``include_top=True``: flatten -> [fc{i} Dense -> ReLU -> Dropout] for each width in ``top``
    -> ``head`` Dense(num_classes); logits (N, num_classes) float32, ``features`` = the last
    hidden dense activations (N, top[-1]).

    ``include_top=False`` (the convolutional base, as Keras' ``include_top=False``): no dense
    layer at all and ``num_classes`` is unused; ``__call__`` and ``features`` return the last
    stage's feature map (N, H / 2^S, W / 2^S, C) float32, or (N, C) with ``pooling="avg"|"max"``
    (global pooling). Any H, W >= 2^S.

    ``top_input_size``: when set (VGG16/19: (224, 224)) the top exists only for that input size
    (its first dense layer has 7*7*512*4096 weights); other sizes raise ``ValueError``.
    """

    num_classes: int = 1000
    stages: tuple[tuple[int, ...], ...] = VGG16_STAGES
    top: tuple[int, ...] = (4096, 4096)
    include_top: bool = True
    top_input_size: tuple[int, int] | None = (224, 224)
    pooling: str | None = None
    dropout: float = 0.5
    batch_norm: bool = False

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"VGG expects x of shape (N, H, W, C), got {x.shape}")
        if self.pooling not in (None, "avg", "max"):
            raise ValueError(f"pooling must be None, 'avg' or 'max', got {self.pooling!r}")
        h, w = x.shape[1:3]
        smallest = 2 ** len(self.stages)
        if h < smallest or w < smallest:
            raise ValueError(
                f"VGG with {len(self.stages)} pooling stages needs H, W >= {smallest}, "
                f"got x of shape {x.shape}"
            )
        if self.include_top and self.top_input_size and (h, w) != tuple(self.top_input_size):
            th, tw = self.top_input_size
            raise ValueError(
                f"VGG with include_top=True needs {th}x{tw} inputs (its dense top is sized for "
                f"them), got x of shape {x.shape}; use include_top=False for other sizes"
            )

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C) float -> logits (N, num_classes) float32 (see the class docstring).

        ``train=True`` uses batch statistics (with ``batch_norm``; needs
        ``mutable=["batch_stats"]``) and dropout (needs ``rngs={"dropout": key}``).
        """
        self._check(x)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.asarray(x, self.dtype)
        for s, widths in enumerate(self.stages, 1):
            x = VGGBlock(
                tuple(widths),
                batch_norm=self.batch_norm,
                name=f"block{s}",
                **self.shared_options(),
            )(x, train)
        if not self.include_top:
            if self.pooling == "avg":
                x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            elif self.pooling == "max":
                x = jnp.max(x, axis=(1, 2))
            return x.astype(jnp.float32)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.top, 1):
            x = nn.relu(nn.Dense(width, name=f"fc{i}", **kw)(x))
            if return_features and i == len(self.top):
                return x.astype(jnp.float32)
            x = nn.Dropout(self.dropout, deterministic=not train, name=f"dropout{i}")(x)
        if return_features:  # no hidden dense layer: the flattened conv features
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, name="head", **kw)(x).astype(jnp.float32)

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> the representation before ``head`` (see the class docstring)."""
        return self(x, train=train, return_features=True)


_IMAGENET_OPTIONS = (
    "include_top", "pooling", "batch_norm", "dropout", "bn_momentum", "bn_epsilon", "dtype"
)

vgg16 = register_variant(
    "vgg16",
    VGG,
    """VGG16 (configuration D), ImageNet layout: 13 convs 3x3 in 5 stages, 3 dense layers.

    Input (N, 224, 224, 3) with ``include_top`` (flatten 7*7*512 = 25,088 -> fc1 4096 -> ReLU ->
    dropout -> fc2 4096 -> ReLU -> dropout -> head); any H, W >= 32 without it (output
    (N, H/32, W/32, 512), or (N, 512) with ``pooling``).

    Params (3 input channels): conv base 14,714,688; with the top and 1000 classes
    **138,357,544** (Keras' and torchvision's ``vgg16``); ``batch_norm=True`` adds a BatchNorm
    after every conv (torchvision's ``vgg16_bn``: +8,448 params, +8,448 running statistics).
    Layer names ``block{s}/conv{i}``, ``fc1``, ``fc2``, ``head`` (Keras: ``block{s}_conv{i}``,
    ``fc1``, ``fc2``, ``predictions``).
    """,
    _IMAGENET_OPTIONS,
    stages=VGG16_STAGES,
    top=(4096, 4096),
    top_input_size=(224, 224),
)

vgg19 = register_variant(
    "vgg19",
    VGG,
    """VGG19 (configuration E): as ``vgg16`` with 4 convs in stages 3-5 (16 convs).

    Params (3 input channels): conv base 20,024,384; with the top and 1000 classes
    **143,667,240**.
    """,
    _IMAGENET_OPTIONS,
    stages=VGG19_STAGES,
    top=(4096, 4096),
    top_input_size=(224, 224),
)


@register("vgg_mini")
def vgg_mini(
    num_classes: int = 10,
    stages: tuple[tuple[int, ...], ...] = VGG_MINI_STAGES,
    dense: int = 256,
    batch_norm: bool = True,
    dropout: float = 0.5,
    include_top: bool = True,
    pooling: str | None = None,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    dtype: Any = jnp.float32,
) -> VGG:
    """VGG for 32x32 inputs: stages of 3x3 convs (32, 32 | 64, 64 | 128, 128, 128), one dense.

    Shapes for (N, 32, 32, 3): block1 (N, 16, 16, 32) -> block2 (N, 8, 8, 64) -> block3
    (N, 4, 4, 128) -> flatten 2,048 -> fc1 ``dense`` -> ReLU (``features``) -> dropout -> head.
    Three stages rather than five because 32 / 2^3 = 4 already; two convs in the first stages
    and three in the last, as VGG deepens where the maps are small.

    ``batch_norm=True`` by default (conv -> BN -> ReLU, BN momentum 0.9, eps 1e-5): VGG itself
    had no BatchNorm (the 2014 paper trained the deep configurations starting from shallower
    ones), but with it this net trains from scratch with the same recipe as the others.

    Params for 32x32x3 and 10 classes with the defaults: convs 434,592 + BN scale/bias 1,152 +
    fc1 524,544 + head 2,570 = **962,858** (+1,152 BatchNorm running statistics);
    ``batch_norm=False``: 961,706. Any input size from 8x8 works (fc1 width follows it).
    """
    return VGG(
        num_classes=num_classes, stages=tuple(tuple(s) for s in stages), top=(dense,),
        include_top=include_top, top_input_size=None, pooling=pooling, dropout=dropout,
        batch_norm=batch_norm, bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon, dtype=dtype,
    )
