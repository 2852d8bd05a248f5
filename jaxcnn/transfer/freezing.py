"""Which parameters train: freeze labels from parameter paths, the top blocks, the split point.

Freezing is exact: a frozen leaf gets ``optax.set_to_zero()`` (:func:`make_freezing_optimizer`:
no weight decay, no momentum drift, so it stays bitwise unchanged) and its gradient is cut with
``stop_gradient`` in the train step (``frozen=`` of :func:`jaxcnn.train.make_train_step`, from
:func:`frozen_mask`), so XLA does not even compute it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import optax
from flax import traverse_util

from jaxcnn.train import make_optimizer

TRAINABLE, FROZEN = "trainable", "frozen"


def top_blocks(params, n: int, *, head: str = "head", model: nn.Module | None = None
               ) -> tuple[str, ...]:
    """Names of the top-level modules trained when the top ``n`` blocks are unfrozen.

    The top-level entries of ``params`` other than ``head`` are taken in network order and
    the last ``n`` of them, plus ``head``, are returned; ``n = 0`` trains the head only. The
    network order is ``model.module_names()`` when ``model`` has it (``stem, block0, ...,
    block15, head_conv`` for EfficientNet-Lite0); without ``model`` it is the key order of
    ``params``, which is the order Flax created the modules in only for params straight from
    ``model.init`` outside jit: params that went through ``jax.jit`` or ``jax.tree`` functions
    (including ``jaxcnn.pretrained.load``) have sorted keys (``block0, block1, block10, ...,
    head_conv, stem``), so pass ``model`` for them.
    """
    names = [k for k in params if k != head]
    order = getattr(model, "module_names", None)
    if order is not None:
        order = list(order())
        if set(order) != set(names):
            raise ValueError(f"params hold modules {sorted(names)} below {head!r}, the model "
                             f"{order}")
        names = order
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(names):
        raise ValueError(f"n must be an int in [0, {len(names)}] (blocks below the head: "
                         f"{names}), got {n!r}")
    return (*names[len(names) - n:], head) if n else (head,)


def freeze_labels(params, trainable: Sequence[str] | Callable[[tuple[str, ...]], bool]):
    """A pytree like ``params`` of ``"trainable"`` / ``"frozen"`` labels from each leaf's path.

    ``trainable``: top-level module names (a leaf is trainable when its path starts with one),
    or a predicate on the path tuple (e.g. ``lambda p: p[0].startswith("block1")``).
    """
    if callable(trainable):
        pred = trainable
    else:
        names = set(trainable)
        unknown = names - set(params)
        if unknown:
            raise ValueError(f"trainable modules {sorted(unknown)} are not in the params; "
                             f"top-level modules: {list(params)}")

        def pred(path):
            return path[0] in names

    flat = traverse_util.flatten_dict(dict(params))
    labels = {k: TRAINABLE if pred(k) else FROZEN for k in flat}
    return traverse_util.unflatten_dict(labels)


def frozen_mask(labels):
    """The ``frozen=`` argument of :func:`jaxcnn.train.make_train_step`: True where the label
    of :func:`freeze_labels` is ``"frozen"``."""
    return jax.tree.map(lambda lab: lab == FROZEN, labels)


def make_freezing_optimizer(tx: optax.GradientTransformation, labels):
    """``tx`` on the trainable leaves, ``optax.set_to_zero()`` on the frozen ones."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def transfer_optimizer(lr: float, *, total_steps: int, warmup_steps: int = 0,
                       weight_decay: float = 0.0, labels=None) -> optax.GradientTransformation:
    """The optimizer of head training and fine-tuning: :func:`jaxcnn.train.make_optimizer`'s
    AdamW with a cosine schedule (linear warm-up over ``warmup_steps``, then down to 0) and
    decoupled weight decay on kernels only (not on biases or BatchNorm), wrapped by
    :func:`make_freezing_optimizer` when ``labels`` (:func:`freeze_labels`) are given."""
    tx = make_optimizer("adamw", lr, schedule="cosine", total_steps=total_steps,
                        warmup_steps=warmup_steps, weight_decay=weight_decay)
    return tx if labels is None else make_freezing_optimizer(tx, labels)


def split_point(model: nn.Module, params, trainable) -> int | None:
    """Where a fine-tuned network splits into a frozen bottom and a trained top part.

    Returns the index (in ``model.module_names()``) of the lowest module holding a trainable
    leaf of ``params`` (``trainable`` as in :func:`freeze_labels`); when only the ``head``
    trains, that of the last module (its input is several times smaller than its unpooled
    output for EfficientNet-Lite: 320 vs 1280 channels). None when there is nothing to
    split: the model has no split forward (``module_names``, ``stem_and_blocks``,
    ``from_block``: :class:`~jaxcnn.models.efficientnet_lite.EfficientNetLite` has one), a
    trainable top-level module is neither one of its modules nor ``head``, or the first module
    trains (nothing below it to cache).
    """
    if not all(hasattr(model, m) for m in ("module_names", "stem_and_blocks", "from_block")):
        return None
    names = list(model.module_names())
    flat = traverse_util.flatten_dict(dict(freeze_labels(params, trainable)))
    train_top = {k[0] for k, lab in flat.items() if lab == TRAINABLE}
    if not train_top <= {*names, "head"}:
        return None
    k = min((names.index(t) for t in train_top if t != "head"), default=len(names) - 1)
    return k or None
