"""Residual networks (He, Zhang, Ren and Sun, 2016): blocks, the CIFAR ResNets and plain nets.

The CIFAR family of the paper's section 4.2: a 3x3 stem with 16 channels, three stages of ``n``
basic blocks with 16, 32 and 64 channels (feature maps 32x32, 16x16, 8x8; the first block of
stages 2 and 3 has stride 2), global average pooling and a dense classifier: ``6n + 2`` weighted
layers (resnet20: n=3, resnet32: n=5, resnet56: n=9). The plain nets are the same stacks of
conv-BN-ReLU layers with the skip connections removed: the paper's demonstration that the deeper
plain net (56) trains *worse* than the shallower one (20) while the deeper ResNet trains better.

The ImageNet ResNets (18/34/50) live in ``jaxcnn.models.resnet_imagenet`` and reuse
``BasicBlock`` from here.

Conventions shared by both files: convolutions have no bias (BatchNorm follows each; an option
adds them for the Keras layout) and He-normal (fan_out, untruncated, as torchvision) kernels;
3x3 convs pad 1 on every side (explicit, so stride-2 layers match PyTorch rather than TF's
asymmetric "SAME"); BatchNorm momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5; blocks are
submodules ``stage{s}_block{b}`` holding ``conv{i}``, ``bn{i}`` and, for projection shortcuts,
``proj_conv`` and ``proj_bn``; the stem is ``stem_conv``/``stem_bn`` and the classifier ``head``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import BatchNormNet, Conv, pooled_classifier
from jaxcnn.models.registry import register_variant

SHORTCUTS = ("A", "B")

he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
PAD1 = ((1, 1), (1, 1))


def shortcut_a(x, features: int, strides: int):
    """Option A shortcut: identity, subsampled by ``strides``, channels zero-padded to ``features``.

    x: (N, H, W, C) -> (N, ceil(H / strides), ceil(W / strides), features); parameter-free (the
    paper's CIFAR choice). Subsampling keeps pixels (0, s, 2s, ...), the same positions a 3x3
    stride-s conv with padding 1 is centred on; new channels are zeros appended after the old.
    """
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(
            f"shortcut A can only add channels: {x.shape[-1]} -> {features}; use shortcut='B'"
        )
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


class BasicBlock(BatchNormNet):
    """Two 3x3 convs with a skip connection (post-activation, the 2016 paper's block).

    ``x`` (N, H, W, C) -> (N, ceil(H / strides), ceil(W / strides), features)::

        y = BN2(conv2(ReLU(BN1(conv1(x)))))          conv1 carries the stride
        out = ReLU(y + shortcut(x))                  (residual=True)
        out = ReLU(y)                                (residual=False: the plain block)

    ``shortcut(x)`` is ``x`` when the shape is unchanged; otherwise option "A" (``shortcut_a``:
    subsample + zero channels, no params) or "B" (``proj_conv`` 1x1 with the stride ->
    ``proj_bn``). Params (no bias): 9*C*F + 9*F*F convs + 4*F BN (+ C*F + 2*F for a B
    projection); as many BatchNorm running statistics as BN params.

    ``zero_init_residual``: ``bn2``'s scale starts at 0, so ``y`` = ``bn2``'s bias = 0 and the
    block is ``ReLU(shortcut(x))`` at init: the identity on non-negative inputs (Goyal et al.
    2017). Meaningless without the skip connection (the block would output zeros), so
    ``residual=False`` rejects it.
    """

    features: int
    strides: int = 1
    shortcut: str = "B"
    residual: bool = True
    zero_init_residual: bool = False
    conv_bias: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.zero_init_residual and not self.residual:
            raise ValueError("zero_init_residual needs the skip connection (residual=True)")
        conv_kw = dict(
            use_bias=self.conv_bias,
            kernel_init=he_normal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        s = self.strides
        y = Conv(self.features, (3, 3), (s, s), padding=PAD1, name="conv1", **conv_kw)(x)
        y = self.bn_relu(train, "bn1")(y)
        y = Conv(self.features, (3, 3), padding=PAD1, name="conv2", **conv_kw)(y)
        y = self.bn_relu(train, "bn2", relu=False, zero_scale=self.zero_init_residual)(y)
        if not self.residual:
            return nn.relu(y)
        if s == 1 and x.shape[-1] == self.features:
            residual = x
        elif self.shortcut == "A":
            residual = shortcut_a(x, self.features, s)
        else:
            residual = Conv(self.features, (1, 1), (s, s), name="proj_conv", **conv_kw)(x)
            residual = self.bn_relu(train, "proj_bn", relu=False)(residual)
        return nn.relu(y + residual)


class CifarResNet(BatchNormNet):
    """He et al.'s CIFAR ResNet / plain net of depth ``6 * blocks_per_stage + 2``.

    Shapes for (N, 32, 32, 3)::

        stem_conv 3x3 16 -> stem_bn -> ReLU            (N, 32, 32, 16)
        stage1: n BasicBlocks, 16 channels             (N, 32, 32, 16)
        stage2: n BasicBlocks, 32 channels, first /2   (N, 16, 16, 32)
        stage3: n BasicBlocks, 64 channels, first /2   (N, 8, 8, 64)
        global average pool                            (N, 64)   <- ``features``
        head Dense(num_classes)                        (N, num_classes) float32

    Any H, W >= 1 works (stride-2 layers give ceil(H / 2)); 32x32 is the design size.

    Attributes:
      num_classes: output width.
      blocks_per_stage: n (3 -> depth 20, 5 -> 32, 9 -> 56, 18 -> 110).
      widths: channels of the three stages (the stem has widths[0]).
      residual: False gives the plain network (no skip connections, no shortcut params).
      shortcut: "A" (default, the paper's CIFAR nets) or "B" (projection when shapes change).
      zero_init_residual: start every block's last BN scale at 0 (residual nets only).
      bn_momentum / bn_epsilon: BatchNorm settings (0.9 / 1e-5).
      dtype: compute dtype; params stay ``param_dtype`` (float32), logits are float32.
    """

    num_classes: int = 10
    blocks_per_stage: int = 3
    widths: tuple[int, ...] = (16, 32, 64)
    residual: bool = True
    shortcut: str = "A"
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C) float -> logits (N, num_classes) float32, or features (N, widths[-1]).

        ``train=True`` uses batch statistics and needs ``mutable=["batch_stats"]``.
        """
        if x.ndim != 4:
            raise ValueError(f"CifarResNet expects x of shape (N, H, W, C), got {x.shape}")
        if self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        x = jnp.asarray(x, self.dtype)
        x = Conv(
            self.widths[0], (3, 3), padding=PAD1, use_bias=False, kernel_init=he_normal,
            name="stem_conv", dtype=self.dtype, param_dtype=self.param_dtype,
        )(x)
        x = self.bn_relu(train, "stem_bn")(x)
        for s, width in enumerate(self.widths, 1):
            for b in range(1, self.blocks_per_stage + 1):
                x = BasicBlock(
                    width,
                    strides=2 if (s > 1 and b == 1) else 1,
                    shortcut=self.shortcut,
                    residual=self.residual,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{s}_block{b}",
                    **self.shared_options(),
                )(x, train)
        return pooled_classifier(
            x, self.num_classes, return_features, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> (N, widths[-1]) float32, the pooled features feeding ``head``."""
        return self(x, train=train, return_features=True)


_RESNET_OPTIONS = ("shortcut", "zero_init_residual", "bn_momentum", "bn_epsilon", "dtype")
_PLAIN_OPTIONS = ("bn_momentum", "bn_epsilon", "dtype")

resnet20 = register_variant(
    "resnet20",
    CifarResNet,
    """ResNet-20 for CIFAR (n=3): 19 convs + 1 dense.

    Params (32x32x3, 10 classes): shortcut "A" (default) **269,722** (+1,376 BN running
    statistics); shortcut "B" 272,474 (+1,568), the two 1x1 projections adding 512 + 2,048
    weights and 96 x 2 BN params.
    """,
    _RESNET_OPTIONS,
    blocks_per_stage=3,
)

resnet32 = register_variant(
    "resnet32",
    CifarResNet,
    """ResNet-32 for CIFAR (n=5). Params (32x32x3, 10 classes): "A" 464,154; "B" 466,906.""",
    _RESNET_OPTIONS,
    blocks_per_stage=5,
)

resnet56 = register_variant(
    "resnet56",
    CifarResNet,
    """ResNet-56 for CIFAR (n=9). Params (32x32x3, 10 classes): "A" 853,018; "B" 855,770.""",
    _RESNET_OPTIONS,
    blocks_per_stage=9,
)

plain20 = register_variant(
    "plain20",
    CifarResNet,
    """Plain-20: resnet20 without skip connections (20 conv/dense layers, conv-BN-ReLU).

    Params (32x32x3, 10 classes): 269,722, the same as resnet20 with shortcut "A".
    """,
    _PLAIN_OPTIONS,
    blocks_per_stage=3,
    residual=False,
)

plain56 = register_variant(
    "plain56",
    CifarResNet,
    """Plain-56: resnet56 without skip connections. Params (32x32x3, 10 classes): 853,018.""",
    _PLAIN_OPTIONS,
    blocks_per_stage=9,
    residual=False,
)
