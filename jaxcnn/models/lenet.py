"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998), the first CNN of the course, in Flax linen."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.registry import register

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "sigmoid": nn.sigmoid}


@register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5 for 32x32 grayscale digits.

    Layout (shapes for a (N, 32, 32, 1) input)::

        C1 conv 6@5x5 VALID  -> act  (N, 28, 28, 6)     156 params
        S2 pool 2x2 /2               (N, 14, 14, 6)
        C3 conv 16@5x5 VALID -> act  (N, 10, 10, 16)  2,416 params
        S4 pool 2x2 /2               (N, 5, 5, 16)
        flatten                      (N, 400)
        C5 dense 120 -> act   (fc1)  (N, 120)        48,120 params
        F6 dense 84  -> act   (fc2)  (N, 84)         10,164 params   <- ``features``
        output dense num_classes (head)              850 params (10 classes)

    Total for 32x32x1 inputs and 10 classes: **61,706** parameters.

    Inputs: ``x`` (N, H, W, C) float. MNIST-sized (N, 28, 28, C) inputs are zero-padded by 2 on
    each side to 32x32 inside the model (as the paper did: the digits sat in the centre of a
    32x32 field so that stroke end-points reach the centre of the top feature detectors); any
    other size from 16x16 up is used as it is (the dense layers then see
    ``16 * ((H - 4) // 2 - 4) // 2 * ((W - 4) // 2 - 4) // 2`` inputs, 400 for 32x32).

    Simplifications against the 1998 paper, stated so the numbers are not mistaken for it:

    * C3 is a full 6 -> 16 convolution; the paper's connection table (each C3 map sees only 3,
      4 or 6 of the S2 maps, 1,516 weights) is not used.
    * S2/S4 are plain pooling; the paper's sub-sampling had a trainable coefficient and bias per
      map and a squashing function after it.
    * ``tanh`` is the plain hyperbolic tangent (the paper scaled it: 1.7159 tanh(2x/3)).
    * the output is a dense layer giving logits for softmax cross-entropy, not the paper's
      Euclidean RBF units.

    Attributes:
      num_classes: output width.
      activation: "tanh" (classic, default), "relu" or "sigmoid".
      pooling: "avg" (classic, default) or "max".
      modern: shorthand for ``activation="relu", pooling="max"`` (overrides both).
      dtype: compute dtype; params stay ``param_dtype`` (float32), logits are float32.
    """

    num_classes: int = 10
    activation: str = "tanh"
    pooling: str = "avg"
    modern: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        """x: (N, H, W, C), H, W >= 16 (28x28 padded to 32x32) -> logits (N, num_classes) f32.

        ``return_features=True`` gives the (N, 84) F6 activations. ``train`` is accepted for the
        common convention (LeNet-5 has neither dropout nor BatchNorm).
        """
        del train
        activation = "relu" if self.modern else self.activation
        pooling = "max" if self.modern else self.pooling
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        if x.ndim != 4:
            raise ValueError(f"LeNet5 expects x of shape (N, H, W, C), got {x.shape}")
        h, w = x.shape[1:3]
        if (h, w) == (28, 28):
            x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        elif h < 16 or w < 16:
            raise ValueError(f"LeNet5 needs H, W >= 16 (32 is the design size), got {x.shape}")
        act = _ACTIVATIONS[activation]
        pool = nn.avg_pool if pooling == "avg" else nn.max_pool
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        x = jnp.asarray(x, self.dtype)
        x = act(nn.Conv(6, (5, 5), padding="VALID", name="conv1", **kw)(x))
        x = pool(x, (2, 2), strides=(2, 2))
        x = act(nn.Conv(16, (5, 5), padding="VALID", name="conv2", **kw)(x))
        x = pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = act(nn.Dense(120, name="fc1", **kw)(x))
        x = act(nn.Dense(84, name="fc2", **kw)(x))
        if return_features:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, name="head", **kw)(x).astype(jnp.float32)

    def features(self, x, train: bool = False):
        """x: (N, H, W, C) -> (N, 84) float32, the F6 activations feeding the classifier."""
        return self(x, train=train, return_features=True)
