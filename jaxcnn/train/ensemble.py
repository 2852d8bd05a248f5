"""Ensembles: K models from K seeds trained in one jitted step with ``jax.vmap``.

The ensemble state is an ordinary :class:`TrainState` whose every array has a leading model
axis of length K (``state.step`` is (K,), a conv kernel (K, 3, 3, Cin, Cout)). ``vmap`` maps the
single-model step over that axis with the batch shared (``in_axes=(0, None, None)``): all
members see the same batches, but each has its own init and its own step keys (so different
augmentation and dropout). Member ``k`` is exactly the model that ``create_train_state`` with
``jax.random.key(seeds[k])`` and the single-model step would produce, up to float summation
order inside the batched convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import Preprocess, make_eval_step, make_train_step


def _check_seeds(seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise ValueError(f"seeds must be a non-empty list of ints >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (equal seeds give equal members), got {seeds}")
    return seeds


def create_ensemble_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seeds: Sequence[int],
    input_shape: Sequence[int],
) -> TrainState:
    """K train states stacked on a leading axis, member k from ``jax.random.key(seeds[k])``."""
    seeds = _check_seeds(seeds)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    return jax.vmap(lambda k: create_train_state(model, tx, k, input_shape))(keys)


def ensemble_size(state: TrainState) -> int:
    """K, the length of the leading model axis of an ensemble state."""
    return int(state.step.shape[0])


def member(state: TrainState, k: int) -> TrainState:
    """Member ``k`` of an ensemble state as a single-model state."""
    return jax.tree.map(lambda a: a[k], state)


def make_ensemble_train_step(
    preprocess: Preprocess, *, label_smoothing: float = 0.0, num_classes: int | None = None,
    frozen=None,
):
    """``(ens_state, images, labels) -> (ens_state, metrics)``; metrics ``loss``/``accuracy`` (K,).

    The single-model :func:`make_train_step` vmapped over the model axis; images (B, H, W, C)
    uint8 and labels (B,) are shared. ``frozen``: one model's mask (as ``make_train_step``'s),
    the same for every member. Jit it with :func:`jaxcnn.train.mesh.jit_train_step`.
    """
    step = make_train_step(preprocess, label_smoothing=label_smoothing, num_classes=num_classes,
                           frozen=frozen)
    return jax.vmap(step, in_axes=(0, None, None))


def make_ensemble_eval_step(preprocess: Preprocess, *, num_classes: int | None = None):
    """``(ens_state, images, labels, mask) -> metrics`` for an ensemble.

    Returns per-member ``loss_sum``, ``correct`` (K,) and ``logits`` (K, B, C), the shared
    ``count`` (a scalar), and the ensemble's own prediction (softmax probabilities averaged over
    members): ``ensemble_correct`` and ``ensemble_loss_sum`` (NLL of the mean probabilities).
    """
    step = make_eval_step(preprocess, num_classes=num_classes)
    vstep = jax.vmap(step, in_axes=(0, None, None, None))

    def ensemble_eval_step(state, images, labels, mask):
        out = vstep(state, images, labels, mask)
        mask = mask.astype(jnp.float32)
        probs = jax.nn.softmax(out["logits"], axis=-1).mean(axis=0)  # (B, C)
        nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0] + 1e-12)
        out["count"] = out["count"][0]
        out["ensemble_correct"] = jnp.sum((jnp.argmax(probs, -1) == labels) * mask)
        out["ensemble_loss_sum"] = jnp.sum(nll * mask)
        return out

    return ensemble_eval_step
