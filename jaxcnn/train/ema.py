"""An exponential moving average (EMA) of the weights, kept in the optimizer state.

``with_ema(tx, decay)`` wraps an optax transformation: its updates are unchanged, and after
every step its state also holds ``ema = decay * ema + (1 - decay) * params_new`` (the params
after the update), starting from the params the optimizer was initialised with. So
``ema_t = decay**t * p_0 + (1 - decay) * sum_{s=1..t} decay**(t - s) * p_s`` with no bias
correction needed. Averaged weights often evaluate better than the last ones (Polyak
averaging); BatchNorm statistics are not averaged: the model's own running statistics are
used with them.

Being optimizer state, the average is checkpointed, resumed bitwise, replicated on every device
and ``vmap``-ed across an ensemble's members like the rest of the state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
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
