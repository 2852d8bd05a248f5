"""AlexNet-mini: the ideas of Krizhevsky, Sutskever and Hinton (2012) scaled for 32x32 images."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxcnn.models.layers import Conv
from jaxcnn.models.registry import register


def local_response_norm(x, size: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75):
    """AlexNet's local response normalisation across channels (paper's constants by default).

    ``b[..., c] = x[..., c] / (k + alpha * sum_{c' in window(c)} x[..., c']**2) ** beta`` with a
    window of ``size`` channels centred on ``c`` (clipped at the ends). Parameter-free.

    Args:
      x: (N, H, W, C).

    Returns:
      (N, H, W, C), same dtype.
    """
    sq = jnp.square(x.astype(jnp.float32))
    half = size // 2
    sums = lax.reduce_window(
        sq, 0.0, lax.add, (1, 1, 1, size), (1, 1, 1, 1),
        ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)),
    )
    return (x.astype(jnp.float32) / (k + alpha * sums) ** beta).astype(x.dtype)


@register("alexnet_mini")
class AlexNetMini(nn.Module):
    """AlexNet's ideas on CIFAR-sized inputs: 5 convs + 3 dense, ReLU, overlapping pools, dropout.

    Layout (defaults; shapes for (N, 32, 32, 3) inputs)::

        conv1 48@5x5 /1 SAME -> ReLU [-> LRN] -> maxpool 3x3 /2 SAME   (N, 16, 16, 48)
        conv2 128@5x5 SAME   -> ReLU [-> LRN] -> maxpool 3x3 /2 SAME   (N, 8, 8, 128)
        conv3 192@3x3 -> ReLU, conv4 192@3x3 -> ReLU, conv5 128@3x3 -> ReLU
        maxpool 3x3 /2 SAME                                            (N, 4, 4, 128)
        flatten (2,048) -> dropout .5 -> fc1 512 -> ReLU -> dropout .5 -> fc2 512 -> ReLU
        -> head num_classes                       (``features`` = the fc2 output, (N, 512))

    Parameters for 32x32x3 and 10 classes: convs 3,648 + 153,728 + 221,376 + 331,968 + 221,312
    = 932,032; dense 1,049,088 + 262,656 + 5,130 = 1,316,874; total **2,248,906**.

    Scaling against the 2012 ImageNet network (224x224x3 -> 1000 classes, about 61M params):

    * first kernel 11x11 stride 4 -> 5x5 stride 1: a 32x32 image has 49x fewer pixels, so the
      "large first kernel" is 5x5 (still the largest in the net; 11x11 would span a third of the
      image) and has no stride (stride 4 would leave 8x8 maps after one layer). Feature maps go
      32 -> 16 -> 8 -> 4 where AlexNet's went 55 -> 27 -> 13 -> 6.
    * widths 96/256/384/384/256 -> 48/128/192/192/128 (half; CPU-trainable) and dense
      4096/4096 -> 512/512; the classifier is fed 4x4x128 = 2,048 values instead of 9,216.
    * kept: ReLU everywhere, overlapping max pooling (3x3 windows, stride 2), dropout 0.5 before
      both hidden dense layers, the 5-conv + 3-dense structure, 5x5 second conv.
    * not kept: the two-GPU split (grouped convs 2 and 4-5), and local response normalisation
      is off by default (``lrn=True`` adds it after conv1 and conv2 with the paper's k=2, n=5,
      alpha=1e-4, beta=0.75; later work found BatchNorm or nothing works as well). No BatchNorm:
      AlexNet predates it.

    With SAME pooling any H, W >= 1 works; the first dense layer's width follows the input
    (H/8 x W/8 x 128 inputs, rounded up).

    Attributes:
      num_classes: output width.
      widths: output channels of conv1..conv5.
      dense: widths of fc1, fc2.
      dropout: rate before fc1 and fc2.
      lrn: local response normalisation after conv1 and conv2.
      dtype: compute dtype; params stay ``param_dtype`` (float32), logits are float32.
    """

    num_classes: int = 10
    widths: tuple[int, int, int, int, int] = (48, 128, 192, 192, 128)
    dense: tuple[int, int] = (512, 512)
    dropout: float = 0.5
    lrn: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C) float -> logits (N, num_classes) float32 (or (N, dense[1]) features).

        ``train=True`` applies dropout and needs ``rngs={"dropout": key}``.
        """
        if len(self.widths) != 5 or len(self.dense) != 2:
            raise ValueError(
                f"widths must list 5 conv widths and dense 2 dense widths, got {self.widths}, "
                f"{self.dense}"
            )
        if x.ndim != 4:
            raise ValueError(f"AlexNetMini expects x of shape (N, H, W, C), got {x.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def pool(y):
            return nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")

        x = jnp.asarray(x, self.dtype)
        for i, (width, size) in enumerate(zip(self.widths, (5, 5, 3, 3, 3), strict=True), 1):
            x = nn.relu(Conv(width, (size, size), padding="SAME", name=f"conv{i}", **kw)(x))
            if i <= 2:
                if self.lrn:
                    x = local_response_norm(x)
                x = pool(x)
        x = pool(x)
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.dense, 1):
            x = nn.Dropout(self.dropout, deterministic=not train, name=f"dropout{i}")(x)
            x = nn.relu(nn.Dense(width, name=f"fc{i}", **kw)(x))
        if return_features:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, name="head", **kw)(x).astype(jnp.float32)

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> (N, dense[1]) float32, the fc2 activations feeding the classifier."""
        return self(x, train=train, return_features=True)
