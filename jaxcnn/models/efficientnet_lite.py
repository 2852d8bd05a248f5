"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" mobile variant, 2020) in Flax linen.

The Lite variants drop what runs badly on mobile accelerators from EfficientNet-B0: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32) and head (1280) that are never
scaled. Layout, with every convolution bias-free and followed by BatchNorm::

    stem: Conv3x3/2 (32) -> BN -> ReLU6                                   224 -> 112
    16 MBConv blocks in 7 stages (expand, kernel, stride, out, repeats):
        (1, 3, 1,  16, 1)  (6, 3, 2,  24, 2)  (6, 5, 2,  40, 2)  (6, 3, 2,  80, 3)
        (6, 5, 1, 112, 3)  (6, 5, 2, 192, 4)  (6, 3, 1, 320, 1)          112 -> 7
      MBConv: [Conv1x1 expand -> BN -> ReLU6] (absent when expand == 1)
              -> depthwise ConvKxK/s -> BN -> ReLU6 -> Conv1x1 project -> BN
              (+ input when stride 1 and C_in == C_out)
    head: Conv1x1 (1280) -> BN -> ReLU6 -> global average pool -> Dropout 0.2 -> Dense (``head``)

Parameters for 1000 classes: 4,652,008 trainable (``params``) plus 42,016 BatchNorm running
statistics (``batch_stats``), the same numbers as the TF/PyTorch checkpoints.

Padding follows TensorFlow's "SAME" rule computed from the input size
(:func:`jaxcnn.ops.shapes.same_padding`), which is asymmetric on the stride-2 layers: at 224 px
that is (0, 1) for 3x3 and (1, 2) for 5x5 (PyTorch's symmetric padding would shift every later
feature map by a pixel and break ported weights). BatchNorm uses TF's ``epsilon=1e-3`` and
``momentum=0.99``. The blocks (``ConvBN``, ``MBConv``) live in :mod:`jaxcnn.models.mbconv`.

Ported ImageNet weights: ``jaxcnn.pretrained.load("efficientnet_lite0")``.

Split forward (for fine-tuning with cached activations, :func:`jaxcnn.transfer.fine_tune`):
``method=model.stem_and_blocks, upto=k`` runs modules ``0 .. k-1`` of ``model.module_names()``
(``stem, block0, ..., block15, head_conv``) and ``method=model.from_block, start=k`` the rest up
to the logits; the parameter names are those of the plain forward pass.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import pooled_classifier
from jaxcnn.models.mbconv import ConvBN, MBConv, MobileNetBase
from jaxcnn.models.registry import register

__all__ = ["ConvBN", "EfficientNetLite", "LITE0_STAGES", "MBConv"]

# (expand_ratio, kernel, stride, out_channels, repeats) per stage, EfficientNet-B0 table.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@register("efficientnet_lite0")
class EfficientNetLite(MobileNetBase):
    """EfficientNet-Lite (default: Lite0, the layout in the module docstring).

    Attributes:
      num_classes: width of the classifier ``head`` (1000 for the ImageNet port).
      stages: (expand, kernel, stride, out, repeats) per stage.
      stem_features / head_features: 32 and 1280, fixed for all Lite variants.
      dropout: rate before ``head`` (0.2 for Lite0).
      bn_momentum / bn_epsilon: TF's 0.99 and 1e-3.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); params float32; logits float32.
    """

    num_classes: int = 1000
    stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES
    stem_features: int = 32
    head_features: int = 1280
    dropout: float = 0.2

    def module_names(self) -> tuple[str, ...]:
        """Top-level modules below ``head``, in network order: ``stem, block0, ...,
        block{B-1}, head_conv`` (18 for Lite0). Module ``k`` of :meth:`stem_and_blocks` and
        :meth:`from_block` is ``module_names()[k]``; the names are the params' top-level keys."""
        blocks = sum(stage[4] for stage in self.stages)
        return ("stem", *(f"block{i}" for i in range(blocks)), "head_conv")

    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, 3) float, preprocessed to [-1, 1] (224x224 for ImageNet) ->
        logits (N, num_classes) float32.

        ``return_features=True`` gives the (N, head_features) pooled features before dropout
        and ``head``. ``train=True`` uses batch statistics (``mutable=["batch_stats"]``) and
        dropout (``rngs={"dropout": key}``).
        """
        if x.ndim != 4:
            raise ValueError(f"EfficientNetLite expects x of shape (N, H, W, C); got {x.shape}")
        return self._run(x, train, 0, None, return_features)

    def stem_and_blocks(self, x, train: bool = False, upto: int | None = None):
        """The bottom part: modules ``0 .. upto - 1`` of :meth:`module_names`.

        x: (N, H, W, 3) image as for ``__call__`` -> the activation entering module ``upto``
        (N, h, w, c) in the compute dtype; ``upto=0`` returns ``x`` itself (cast), ``upto =
        len(module_names())`` the output of ``head_conv`` before pooling; None: all of them.
        ``from_block(stem_and_blocks(x, upto=k), start=k)`` equals ``__call__(x)``::

            h = model.apply(variables, x, train=False, method=model.stem_and_blocks, upto=k)
            logits = model.apply(variables, h, train=False, method=model.from_block, start=k)

        Only the variables of the modules it runs are read (others may be absent).
        """
        n = len(self.module_names())
        upto = n if upto is None else upto
        self._check_split("upto", upto, n, x)
        return self._run(x, train, 0, upto, False)

    def from_block(self, h, train: bool = False, start: int = 0,
                   return_features: bool = False):
        """The top part: modules ``start ..`` of :meth:`module_names`, pooling, dropout, head.

        h: the activation entering module ``start`` (:meth:`stem_and_blocks` with ``upto=start``)
        -> logits (N, num_classes) float32, or with ``return_features`` the (N, head_features)
        pooled features. ``start=0`` is ``__call__``. Dropout and BatchNorm behave as in
        ``__call__`` (``train``); the model has no stochastic depth (drop-connect), so with
        ``train=False`` the bottom part is a fixed function of the image.
        """
        self._check_split("start", start, len(self.module_names()), h)
        return self._run(h, train, start, None, return_features)

    @staticmethod
    def _check_split(arg: str, k, n: int, x) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
            raise ValueError(f"{arg} must be an int in [0, {n}] (a module index; module_names() "
                             f"lists them), got {k!r}")
        if x.ndim != 4:
            raise ValueError(f"EfficientNetLite expects (N, H, W, C) input; got {x.shape}")

    @nn.compact
    def _run(self, x, train: bool, start: int, stop: int | None, return_features: bool):
        """Modules ``start .. stop - 1`` (all when ``stop`` is None, then the classifier)."""
        kw = self.shared_options()
        layers = [functools.partial(ConvBN, self.stem_features, 3, 2, name="stem", **kw)]
        i = 0
        for expand, kernel, stride, out, repeats in self.stages:
            for r in range(repeats):
                layers.append(functools.partial(
                    MBConv, out, expand, kernel, stride if r == 0 else 1, name=f"block{i}", **kw))
                i += 1
        layers.append(functools.partial(ConvBN, self.head_features, 1, name="head_conv", **kw))
        x = jnp.asarray(x, self.dtype)
        for make in layers[start:stop]:
            x = make()(x, train)
        if stop is not None:
            return x
        return pooled_classifier(
            x, self.num_classes, return_features, dtype=self.dtype, param_dtype=self.param_dtype,
            dropout=self.dropout, train=train,
        )

    def features(self, x, train: bool = False):
        """x: (N, H, W, 3) -> (N, head_features) float32 pooled features feeding ``head``."""
        return self(x, train=train, return_features=True)
