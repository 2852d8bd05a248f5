"""Optimizers and learning-rate schedules (optax).

* ``sgd``: Nesterov momentum with decoupled weight decay. The update of a weight ``w`` is
  ``w -= lr_t * (nesterov_momentum(g) + wd * w)``: the decay is added after the momentum
  buffer (it is not accumulated in it, unlike L2 regularisation in the loss) and then scaled
  by the schedule, as in SGDW (Loshchilov and Hutter).
* ``adamw``: ``optax.adamw`` (decoupled decay, ``w -= lr_t * (adam(g) + wd * w)``).
* Weight decay mask: only kernels (arrays with ndim >= 2: conv and dense weights) are decayed;
  biases and BatchNorm scale/bias (1-D) are not -- decaying BN scales fights normalisation.
* Schedules: ``onecycle`` (``optax.cosine_onecycle_schedule``: warm up from lr/25 to lr over
  ``warmup_steps``, then cosine down to lr/25e4), ``cosine`` (linear warm-up from 0 then cosine
  to 0), ``constant`` (optional linear warm-up).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


def decay_mask(params):
    """True for the leaves to weight-decay: arrays with ndim >= 2 (kernels), not biases/BN."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def default_warmup_steps(schedule: str, total_steps: int) -> int:
    """Warm-up used when none is given: 30% for one-cycle, 5% for cosine, none for constant."""
    if schedule == "onecycle":
        return max(1, int(0.3 * total_steps))
    if schedule == "cosine":
        return int(0.05 * total_steps)
    return 0


def make_schedule(
    schedule: str,
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
) -> Callable[[int], float]:
    """An optax schedule ``step -> learning rate`` peaking at ``learning_rate``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if not (isinstance(learning_rate, int | float) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if warmup_steps is None:
        warmup_steps = default_warmup_steps(schedule, total_steps)
    limit = total_steps if schedule != "constant" else None
    if (
        isinstance(warmup_steps, bool)
        or not isinstance(warmup_steps, int)
        or warmup_steps < 0
        or (limit is not None and warmup_steps >= limit)
    ):
        raise ValueError(
            f"warmup_steps must be an int in [0, total_steps={total_steps}), got {warmup_steps!r}"
        )
    lr = float(learning_rate)
    if schedule == "onecycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=total_steps,
            peak_value=lr,
            pct_start=max(warmup_steps, 1) / total_steps,
            div_factor=25.0,
            final_div_factor=1e4,
        )
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=0.0,
        )
    if warmup_steps:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
            [warmup_steps],
        )
    return optax.constant_schedule(lr)


def learning_rate_at(schedule: Callable | float, step: int) -> float:
    """The learning rate a schedule (or a constant) gives at ``step``, as a Python float."""
    if callable(schedule):
        return float(schedule(int(step)))
    return float(schedule)


def make_optimizer(
    name: str = "sgd",
    learning_rate: float = 0.1,
    *,
    schedule: str = "onecycle",
    total_steps: int,
    warmup_steps: int | None = None,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer with a schedule, decoupled weight decay and optional clipping.

    Args:
      name: ``"sgd"`` (Nesterov momentum + decoupled decay) or ``"adamw"``.
      learning_rate: peak learning rate of the schedule.
      schedule: ``"onecycle"``, ``"cosine"`` or ``"constant"`` (see :func:`make_schedule`).
      total_steps: number of optimizer steps of the whole run (epochs * steps per epoch).
      warmup_steps: warm-up length; default from :func:`default_warmup_steps`.
      momentum, nesterov: SGD momentum (AdamW ignores these; its b1 is 0.9).
      weight_decay: decoupled decay coefficient (0 disables it); masked by :func:`decay_mask`.
      clip_norm: clip gradients to this global norm first (None: no clipping).

    Returns:
      An ``optax.GradientTransformation`` (pure; works under ``jax.vmap`` for ensembles).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    lr = make_schedule(schedule, learning_rate, total_steps=total_steps, warmup_steps=warmup_steps)
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if name == "sgd":
        if momentum:
            parts.append(optax.trace(decay=momentum, nesterov=nesterov))
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
        parts.append(optax.scale_by_learning_rate(lr))
    else:
        parts.append(optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts)
