"""Averages of the weights kept in the optimizer state: an EMA, and airbench's lookahead.

EMA
---

``with_ema(tx, decay)`` wraps an optax transformation: its updates are unchanged, and after
every step its state also holds ``ema = decay * ema + (1 - decay) * params_new`` (the params
after the update), starting from the params the optimizer was initialised with. So
``ema_t = decay**t * p_0 + (1 - decay) * sum_{s=1..t} decay**(t - s) * p_s`` with no bias
correction needed. Averaged weights often evaluate better than the last ones (Polyak
averaging); BatchNorm statistics are not averaged: the model's own running statistics are
used with them.

Lookahead
---------
``with_lookahead(tx, every, decay, total_steps)`` (airbench's "lookahead/EMA", after Zhang et
al. 2019) keeps slow weights ``slow`` (initially the params the optimizer was initialised
with). After update ``t`` (counted from 1) with ``t % every == 0``, and after the last one
(``t == total_steps``), with ``d_t = decay**every * (t / total_steps)**3``::

    slow = slow + (1 - d_t) * (fast - slow)     # = d_t * slow + (1 - d_t) * fast
    params = slow                               # the fast weights restart from the slow ones

where ``fast`` are the params after ``tx``'s update. Early in the run ``d_t`` is near 0 (the
slow weights follow the fast ones); towards the end it grows to ``decay**every``, averaging the
last windows. Between syncs the params are the plain ``tx`` trajectory. The update that lands
the params on ``slow`` is ``slow - params``; the slow weights are stored as ``params + (slow -
params)``, computed like ``optax.apply_updates``, so after a sync ``params == slow`` bitwise. A
leaf that never moves (a group with ``lr_scale`` 0) stays bitwise unchanged: its
``fast - slow`` is exactly 0. A group outside its training window still takes part: at the
first sync after it stops it lands on the blend, then stays there (as in airbench).

Being optimizer state, both are checkpointed, resumed bitwise, replicated on every device and
``vmap``-ed across an ensemble's members like the rest of the state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
    """``inner``: the wrapped optimizer's state; ``ema``: the averaged params (like params)."""

    inner: Any
    ema: Any


def with_ema(tx: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """``tx`` that also keeps an EMA of the params with ``decay`` in [0, 1) (see the module)."""
    if not 0 <= decay < 1:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")

    def init(params):
        return EmaState(tx.init(params), jax.tree.map(lambda p: p.copy(), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("with_ema needs the params in update(updates, state, params)")
        updates, inner = tx.update(updates, state.inner, params)
        new = optax.apply_updates(params, updates)  # what apply_gradients will store
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new)
        return updates, EmaState(inner, ema)

    return optax.GradientTransformation(init, update)


class LookaheadState(NamedTuple):
    """``inner``: the wrapped optimizer's state; ``slow``: the slow weights (like params);
    ``count``: int32 number of updates so far."""

    inner: Any
    slow: Any
    count: jax.Array


def lookahead_decay_at(t, every: int, decay: float, total_steps: int):
    """``d_t = decay**every * (t / total_steps)**3`` (float32, capped at 1): the weight the slow
    weights keep at a sync after update ``t``."""
    frac = jnp.asarray(t, jnp.float32) / jnp.float32(total_steps)
    return jnp.minimum(jnp.float32(decay**every) * frac**3, jnp.float32(1.0))


def with_lookahead(
    tx: optax.GradientTransformation, every: int, decay: float, total_steps: int
) -> optax.GradientTransformation:
    """``tx`` with airbench's lookahead (see the module): every ``every`` updates, and after
    update ``total_steps``, the params are blended into slow weights with ``d_t = decay**every *
    (t / total_steps)**3`` and reset to them.

    Args:
      tx: the optimizer to wrap (its updates are used unchanged between syncs).
      every: updates between syncs, a positive int.
      decay: per-step decay in [0, 1].
      total_steps: the run's number of updates (the cubic ramp's end and the last sync).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs the params; its state is a
      :class:`LookaheadState`.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"lookahead every must be a positive int, got {every!r}")
    if not 0 <= decay <= 1:
        raise ValueError(f"lookahead decay must be in [0, 1], got {decay!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")

    def init(params):
        slow = jax.tree.map(lambda p: p.copy(), params)
        return LookaheadState(tx.init(params), slow, jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("with_lookahead needs the params in update(updates, state, params)")
        updates, inner = tx.update(updates, state.inner, params)
        count = state.count + 1
        sync = (count % every == 0) | (count == total_steps)
        keep = lookahead_decay_at(count, every, decay, total_steps)

        fast = optax.apply_updates(params, updates)  # what apply_gradients would store
        mix = 1 - keep
        target = jax.tree.map(lambda s, f: s + mix.astype(s.dtype) * (f - s), state.slow, fast)
        reset = jax.tree.map(lambda t, p: t - p, target, params)
        landed = optax.apply_updates(params, reset)  # the params after the reset, exactly
        new_updates = jax.tree.map(
            lambda r, u: jnp.where(sync, r, u).astype(u.dtype), reset, updates
        )
        slow = jax.tree.map(lambda n, s: jnp.where(sync, n, s), landed, state.slow)
        return new_updates, LookaheadState(inner, slow, count)

    return optax.GradientTransformation(init, update)


def lookahead_params(state_or_opt_state):
    """The slow weights of a TrainState (or of its ``opt_state``) whose optimizer keeps a
    lookahead (``make_optimizer(..., lookahead_every=...)``, also under an EMA); None when it
    has none."""
    opt_state = getattr(state_or_opt_state, "opt_state", state_or_opt_state)
    if isinstance(opt_state, EmaState):
        opt_state = opt_state.inner
    if isinstance(opt_state, LookaheadState):
        return opt_state.slow
    return None


def ema_params(state_or_opt_state):
    """The averaged params of a TrainState (or of its ``opt_state``) whose optimizer was made
    with an EMA (``make_optimizer(..., ema_decay=...)``); None when it has none. Ensemble states
    give averages with the leading model axis."""
    opt_state = getattr(state_or_opt_state, "opt_state", state_or_opt_state)
    if isinstance(opt_state, EmaState):
        return opt_state.ema
    return None


def with_ema_params(state):
    """``state`` with its params replaced by their EMA (for evaluation); ValueError if the
    optimizer keeps no EMA."""
    ema = ema_params(state)
    if ema is None:
        raise ValueError("this state's optimizer keeps no EMA of the weights; set "
                         "FitConfig.ema_decay (make_optimizer(..., ema_decay=...))")
    return state.replace(params=ema)
