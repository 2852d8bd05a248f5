"""The multilayer-perceptron baseline: images flattened, no convolution at all."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.registry import register


@register("mlp")
class MLP(nn.Module):
    """Flatten -> Dense 512 -> ReLU -> Dense 256 -> ReLU -> Dense(num_classes) (``head``).

    For 32x32x3 inputs and 10 classes: 3072*512+512 + 512*256+256 + 256*10+10 = 1,707,274 params.

    Attributes:
      num_classes: output width.
      hidden: widths of the hidden layers.
      dtype: compute dtype (params are always ``param_dtype``, float32 by default).
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (512, 256)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C) float -> logits (N, num_classes) float32, or features (N, hidden[-1])."""
        del train  # no dropout or BatchNorm here; accepted for the common convention
        x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i + 1}")(
                x
            )
            x = nn.relu(x)
        if return_features:
            return x.astype(jnp.float32)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(
            x
        )
        return x.astype(jnp.float32)

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> (N, hidden[-1]) float32, the input of the classifier."""
        return self(x, train=train, return_features=True)
