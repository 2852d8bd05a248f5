"""Learning-rate schedules (optax): ``step -> learning rate`` functions peaking at ``lr``.

* ``onecycle`` (``optax.cosine_onecycle_schedule``: warm up from lr/25 to lr over
  ``warmup_steps``, then cosine down to lr/25e4);
* ``cosine`` (linear warm-up from 0, then cosine to 0);
* ``constant`` (optional linear warm-up);
* ``triangle`` (airbench's: linear from ``lr * initial_lr_scale`` up to lr at ``warmup_steps``,
  default 23% of the run, then linear down to ``lr * final_lr_scale`` at ``total_steps``; with
  no warm-up and ``final_lr_scale=0`` it is the linear decay to 0 of airbench94_muon).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("onecycle", "cosine", "constant", "triangle")

# Where the triangle schedule peaks by default (airbench: 23% of the run).
TRIANGLE_PEAK = 0.23


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def default_warmup_steps(schedule: str, total_steps: int) -> int:
    """Warm-up used when none is given: 30% for one-cycle (at least one step, and fewer than
    ``total_steps``), 5% for cosine, 23% for triangle (``TRIANGLE_PEAK``, airbench's peak
    position), none for constant."""
    if schedule == "onecycle":
        return min(max(1, int(0.3 * total_steps)), total_steps - 1)
    if schedule == "cosine":
        return int(0.05 * total_steps)
    if schedule == "triangle":
        return min(int(TRIANGLE_PEAK * total_steps), total_steps - 1)
    return 0


def _check_lr_scale(name: str, value) -> float:
    if not (_number(value) and value >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def triangle_schedule(
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int,
    initial_lr_scale: float = 0.2,
    final_lr_scale: float = 0.07,
) -> Callable[[int], jax.Array]:
    """airbench's triangular schedule: linear from ``learning_rate * initial_lr_scale`` at step
    0 up to ``learning_rate`` at ``warmup_steps``, then linear down to ``learning_rate *
    final_lr_scale`` at ``total_steps`` (and constant after it). ``warmup_steps`` 0 starts at the
    peak. Piecewise linear, like ``np.interp(step, [0, warmup_steps, total_steps], [lr *
    initial_lr_scale, lr, lr * final_lr_scale])``, in float32."""
    lr = float(learning_rate)
    if warmup_steps:
        xp = (0.0, float(warmup_steps), float(total_steps))
        fp = (lr * initial_lr_scale, lr, lr * final_lr_scale)
    else:
        xp, fp = (0.0, float(total_steps)), (lr, lr * final_lr_scale)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        return jnp.interp(t, jnp.asarray(xp, jnp.float32), jnp.asarray(fp, jnp.float32))

    return schedule


def make_schedule(
    schedule: str,
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    initial_lr_scale: float = 0.2,
    final_lr_scale: float = 0.07,
) -> Callable[[int], float]:
    """An optax schedule ``step -> learning rate`` peaking at ``learning_rate``.

    ``initial_lr_scale`` and ``final_lr_scale`` (numbers >= 0) are used by ``"triangle"`` only
    (:func:`triangle_schedule`): its start and end as fractions of the peak; the other schedules
    ignore them."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if not (isinstance(learning_rate, int | float) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    initial_lr_scale = _check_lr_scale("initial_lr_scale", initial_lr_scale)
    final_lr_scale = _check_lr_scale("final_lr_scale", final_lr_scale)
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
    if schedule == "triangle":
        return triangle_schedule(
            lr,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            initial_lr_scale=initial_lr_scale,
            final_lr_scale=final_lr_scale,
        )
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
