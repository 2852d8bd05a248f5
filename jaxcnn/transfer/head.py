"""The new classifier: a Dense head on pooled features, and the ``apply_fn`` that trains it.

The head is ``params["head"] = {"kernel": (D, K), "bias": (K,)}`` (the registry convention, so
:func:`with_head` turns a backbone into a K-class registry model). :func:`classifier_apply`
wraps the head, or a whole network, or the top part of a split network, in a function with
``model.apply``'s signature whose dropout sits on the pooled features, independent of
BatchNorm's mode: it is the ``apply_fn`` of the :class:`jaxcnn.train.TrainState` that
:func:`jaxcnn.train.make_train_step` trains with ``train_bn=False``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def init_head(key: jax.Array, feature_dim: int, num_classes: int) -> dict:
    """Params ``{"kernel": (D, K), "bias": (K,)}`` of a fresh ``nn.Dense`` head."""
    return nn.Dense(num_classes).init(key, jnp.zeros((1, feature_dim)))["params"]


def head_logits(head: dict, features) -> jax.Array:
    """``features @ kernel + bias``: (N, D) -> (N, K) float32."""
    return jnp.asarray(features, jnp.float32) @ head["kernel"] + head["bias"]


def with_head(variables, head: dict) -> dict:
    """A copy of ``variables`` whose ``params["head"]`` is ``head`` (other leaves shared)."""
    out = dict(variables)
    params = dict(out["params"])
    params["head"] = {k: jnp.asarray(v) for k, v in head.items()}
    out["params"] = params
    return out


def _dropout(key, rate: float, x):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def classifier_apply(model: nn.Module | None = None, *, dropout: float = 0.0,
                     start: int | None = None):
    """``apply_fn(variables, x, train=False, rngs=None, mutable=False)``: features -> dropout
    -> ``head_logits(params["head"], .)``, like ``model.apply``.

    Args:
      model: None: ``x`` are pooled features ``(N, D)`` and ``variables["params"]`` is the
        head itself. Otherwise a registry model accepting ``return_features=True`` whose
        classifier is ``params["head"]``: ``x`` are its inputs, or with ``start`` the
        activations entering module ``start`` (``model.from_block``, a split forward such as
        EfficientNet-Lite's; needs ``train=False``, as the cached bottom part ran in
        inference mode).
      dropout: rate on the features, applied when ``rngs`` holds a ``"dropout"`` key (the
        train step passes one whatever ``train`` is; evaluation passes none).

    ``train`` and ``mutable`` go to the model (``train=True`` with ``mutable=["batch_stats"]``:
    batch statistics, updated); the result is the logits, or ``(logits, updates)`` when
    ``mutable`` is given.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    split = {} if start is None else dict(method=model.from_block, start=start)

    def apply_fn(variables, x, train: bool = False, rngs=None, mutable=False):
        params = variables["params"]
        updates = None
        if model is None:
            feats, head = x, params
        else:
            if start is not None and train:
                raise ValueError("start (cached activations) needs BatchNorm in inference mode "
                                 "(freeze_bn=True): with batch statistics the frozen bottom "
                                 "part changes from step to step")
            kw = dict(train=train, return_features=True, **split)
            if mutable:
                feats, updates = model.apply(variables, x, mutable=mutable, rngs=rngs, **kw)
            else:
                feats = model.apply(variables, x, rngs=rngs, **kw)
            head = params["head"]
        if dropout and rngs and "dropout" in rngs:
            feats = _dropout(jax.random.fold_in(rngs["dropout"], 1), dropout, feats)
        logits = head_logits(head, feats)
        return (logits, updates) if mutable else logits

    return apply_fn
