"""The classic 3-block CIFAR CNN (the course's Keras model), in Flax linen."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import BatchNormNet, Conv
from jaxcnn.models.registry import register


@register("cnn3")
class CNN3(BatchNormNet):
    """Three VGG-style blocks and a small dense head.

    For (filters, dropout) in (32, .2), (64, .3), (128, .4)::

        Conv3x3 same -> BatchNorm -> ReLU -> Conv3x3 same -> BatchNorm -> ReLU
        -> MaxPool 2x2 -> Dropout

    then Flatten (4*4*128 = 2048 for 32x32 inputs) -> Dense 128 (``fc``) -> ReLU -> Dropout .5
    -> Dense(num_classes) (``head``).

    Trainable parameters for 32x32x3 and 10 classes: convs 287,008 + BN scale/bias 896 + dense
    263,562 = 551,466; plus 896 BatchNorm running statistics (``batch_stats``).

    BatchNorm: ``momentum=0.9`` (running = 0.9*running + 0.1*batch, PyTorch's default; Keras uses
    0.99, which lags behind for short runs) and ``epsilon=1e-5`` (PyTorch; Keras uses 1e-3). Both
    are options. BatchNorm statistics are reduced in float32 even with bf16 compute.

    Attributes:
      num_classes: output width.
      filters / dropouts: per-block widths and dropout rates.
      dense: width of the hidden dense layer; head_dropout: dropout before ``head``.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); param_dtype: float32 by default.
    """

    num_classes: int = 10
    filters: tuple[int, ...] = (32, 64, 128)
    dropouts: tuple[float, ...] = (0.2, 0.3, 0.4)
    dense: int = 128
    head_dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C) float, H and W divisible by 8 -> logits (N, num_classes) float32.

        With ``return_features=True`` returns the (N, dense) activations before the head.
        ``train=True`` uses batch statistics (needs ``mutable=["batch_stats"]``) and dropout
        (needs ``rngs={"dropout": key}``).
        """
        if len(self.filters) != len(self.dropouts):
            raise ValueError(
                f"filters {self.filters} and dropouts {self.dropouts} must have the same length"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.asarray(x, self.dtype)
        for b, (width, rate) in enumerate(zip(self.filters, self.dropouts, strict=True), start=1):
            for c in (1, 2):
                x = Conv(width, (3, 3), padding="SAME", name=f"block{b}_conv{c}", **kw)(x)
                # BatchNorm -> ReLU, and after the block's second one the 2x2 max pool
                x = self.bn_relu(train, f"block{b}_bn{c}", pool=c == 2)(x)
            x = nn.Dropout(rate, deterministic=not train, name=f"block{b}_dropout")(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.dense, name="fc", **kw)(x))
        if return_features:
            return x.astype(jnp.float32)
        x = nn.Dropout(self.head_dropout, deterministic=not train, name="head_dropout")(x)
        x = nn.Dense(self.num_classes, name="head", **kw)(x)
        return x.astype(jnp.float32)

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> (N, dense) float32 activations feeding the classifier."""
        return self(x, train=train, return_features=True)
