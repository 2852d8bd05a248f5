"""Optimizers (optax): SGD, AdamW and Muon, with parameter groups.

* ``sgd``: Nesterov momentum with decoupled weight decay. The update of a weight ``w`` is
  ``w -= lr_t * (nesterov_momentum(g) + wd * w)``: the decay is added after the momentum
  buffer (it is not accumulated in it, unlike L2 regularisation in the loss) and then scaled
  by the schedule, as in SGDW (Loshchilov and Hutter).
* ``adamw``: ``optax.adamw`` (decoupled decay, ``w -= lr_t * (adam(g) + wd * w)``).
* Parameter groups (:class:`ParamGroup`): rules that give the parameters they match their own
  learning-rate scale, weight decay and training window (the first matching rule wins; the
  rest get the plain settings). The default rule, :data:`DEFAULT_PARAM_GROUPS`, exempts the
  1-D leaves from weight decay: biases and BatchNorm scale/bias (decaying BN scales fights
  normalisation); kernels (ndim >= 2: conv and dense weights) are decayed.
* A group may use Muon instead (``ParamGroup(..., optimizer="muon")``, :mod:`jaxcnn.train.muon`):
  airbench94_muon trains its conv filters with it and everything else with Nesterov SGD.
* Schedules (:mod:`jaxcnn.train.schedules`): ``onecycle``, ``cosine``, ``constant`` and
  ``triangle``.
* ``ema_decay``: the optimizer state also keeps an exponential moving average of the weights
  (:mod:`jaxcnn.train.ema`).
* ``lookahead_every``: the optimizer state keeps slow weights that the params are pulled to and
  reset to every few steps (airbench's "lookahead", :func:`jaxcnn.train.ema.with_lookahead`).

:func:`make_optimizer` is memoised on its arguments: the same settings give the same optax
object, so a train state built with it has the same static ``tx`` as before and jit reuses the
programs it compiled for it (a second ``fit`` with the same configuration compiles nothing).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxcnn.train.schedules import (  # noqa: F401  (re-exported: the optimizer's schedules)
    SCHEDULES,
    TRIANGLE_PEAK,
    _check_lr_scale,
    default_warmup_steps,
    learning_rate_at,
    make_schedule,
    triangle_schedule,
)

OPTIMIZERS = ("sgd", "adamw")
# What a parameter group may use instead of the run's optimizer (None: the run's).
GROUP_OPTIMIZERS = (None, "muon")

# ``ParamGroup.match`` labels that select leaves by their shape instead of their name.
PREDICATES: dict[str, Callable[[jax.Array], bool]] = {
    "ndim<2": lambda leaf: leaf.ndim < 2,  # biases, BatchNorm scale and bias
    "ndim>=2": lambda leaf: leaf.ndim >= 2,  # conv and dense kernels
}


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class ParamGroup:
    """Optimizer settings for the parameters that one rule matches.

    Attributes:
      match: which leaves: one of the labels of :data:`PREDICATES` (``"ndim<2"``: biases and
        BatchNorm scale/bias; ``"ndim>=2"``: kernels), or else a regular expression searched
        (``re.search``) in the leaf's path, its keys joined by ``/``
        (e.g. ``"block1_conv1/bias"``, ``"^head/"``).
      lr_scale: multiplies the schedule's learning rate (0 freezes the group: its leaves stay
        bitwise unchanged, with no optimizer state).
      weight_decay: the group's decoupled weight decay; None: the optimizer's ``weight_decay``.
      start_epoch, stop_epoch: the group trains only in epochs ``[start_epoch, stop_epoch)``
        (None: to the end); outside that window its learning rate is 0, so its leaves do not
        change at all (no decay either). Fractions of an epoch are rounded to whole steps.
        E.g. ``ParamGroup("stem/bias", stop_epoch=3)``: trained for 3 epochs, then frozen.
      anneal_in_window: the run's schedule is compressed into the group's window, so it ends
        where the window ends (with a linear decay to 0: ``lr * (1 - step / stop)``) instead
        of being cut off there. Needs ``stop_epoch``.
      optimizer: None: the run's optimizer; ``"muon"``: Muon (:mod:`jaxcnn.train.muon`:
        orthogonalised momentum, filters kept at norm sqrt(C_out); kernels only, no weight
        decay).
      momentum: the group's momentum (None: the run's).
    """

    match: str
    lr_scale: float = 1.0
    weight_decay: float | None = None
    start_epoch: float = 0.0
    stop_epoch: float | None = None
    anneal_in_window: bool = False
    optimizer: str | None = None
    momentum: float | None = None

    def __post_init__(self):
        if not isinstance(self.match, str) or not self.match:
            raise ValueError(f"ParamGroup.match must be a non-empty string, got {self.match!r}")
        if self.match not in PREDICATES:
            try:
                re.compile(self.match)
            except re.error as err:
                raise ValueError(
                    f"ParamGroup.match {self.match!r} is neither a label of {tuple(PREDICATES)} "
                    f"nor a valid regular expression ({err})"
                ) from None
        if not (_number(self.lr_scale) and self.lr_scale >= 0):
            raise ValueError(f"ParamGroup.lr_scale must be a number >= 0, got {self.lr_scale!r}")
        if self.weight_decay is not None and not (
            _number(self.weight_decay) and self.weight_decay >= 0
        ):
            raise ValueError(
                f"ParamGroup.weight_decay must be None or a number >= 0, got {self.weight_decay!r}"
            )
        if not (_number(self.start_epoch) and self.start_epoch >= 0):
            raise ValueError(
                f"ParamGroup.start_epoch must be a number >= 0, got {self.start_epoch!r}"
            )
        if self.stop_epoch is not None and not (
            _number(self.stop_epoch) and self.stop_epoch > self.start_epoch
        ):
            raise ValueError(
                f"ParamGroup.stop_epoch must be None or a number > start_epoch "
                f"({self.start_epoch}), got {self.stop_epoch!r}"
            )

        if self.anneal_in_window and self.stop_epoch is None:
            raise ValueError("ParamGroup.anneal_in_window needs a stop_epoch (the window's end)")
        if self.optimizer not in GROUP_OPTIMIZERS:
            raise ValueError(f"ParamGroup.optimizer must be one of {GROUP_OPTIMIZERS}, got "
                             f"{self.optimizer!r}")
        if self.optimizer == "muon" and self.weight_decay:
            raise ValueError("ParamGroup: a Muon group keeps its filters at a fixed norm and "
                             f"takes no weight decay; got weight_decay={self.weight_decay!r}")
        if self.momentum is not None and not (_number(self.momentum)
                                              and 0 <= self.momentum < 1):
            raise ValueError(f"ParamGroup.momentum must be None or in [0, 1), got "
                             f"{self.momentum!r}")

    def matches(self, path: str, leaf) -> bool:
        """Whether the leaf at ``path`` (keys joined by ``/``) belongs to this group."""
        if self.match in PREDICATES:
            return bool(PREDICATES[self.match](leaf))
        return re.search(self.match, path) is not None


# Biases and BatchNorm parameters are not weight-decayed; everything else gets the defaults.
DEFAULT_PARAM_GROUPS: tuple[ParamGroup, ...] = (ParamGroup("ndim<2", weight_decay=0.0),)


def leaf_path(path) -> str:
    """A jax key path as ``block1_conv1/kernel`` (a tuple index and orbax's string key give the
    same name; checkpoint digests use it too)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def group_labels(params, groups: tuple[ParamGroup, ...]):
    """The index of each leaf's group (the first rule that matches it), or ``len(groups)`` for
    leaves no rule matches, as a pytree like ``params``."""
    def label(path, leaf):
        name = leaf_path(path)
        return next((i for i, g in enumerate(groups) if g.matches(name, leaf)), len(groups))

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params, groups: tuple[ParamGroup, ...] = DEFAULT_PARAM_GROUPS, weight_decay=1.0):
    """True for the leaves that get weight decay under ``groups`` (default: ndim >= 2, the
    kernels; not biases/BatchNorm)."""
    decays = [g.weight_decay for g in groups] + [None]
    return jax.tree.map(
        lambda i: (weight_decay if decays[i] is None else decays[i]) > 0,
        group_labels(params, groups),
    )


def _window_steps(group: ParamGroup, steps_per_epoch: int) -> tuple[int, int | None]:
    """The group's training window ``[start, stop)`` in steps (stop None: to the end)."""
    start = int(round(group.start_epoch * steps_per_epoch))
    stop = None if group.stop_epoch is None else int(round(group.stop_epoch * steps_per_epoch))
    return start, stop


def frozen_leaves(params, groups: tuple[ParamGroup, ...], epoch: int, steps_per_epoch: int,
                  clip_norm: float | None = None):
    """The leaves whose gradient no update uses from epoch ``epoch`` to the end of the run, as
    a pytree of bools like ``params``; None when there are none (or with ``clip_norm``).

    A leaf is frozen when its group has ``lr_scale == 0`` or its window ended at or before the
    epoch's first step: its rate is 0 for every remaining step, so its gradient changes
    nothing (as PyTorch's ``requires_grad=False``) and the train step need not compute it
    (:func:`jaxcnn.train.make_train_step`'s ``frozen``; for airbench's stem that skips the
    first 3x3 conv's input gradient). A group that starts later is not frozen before its
    window: its momentum gathers the gradients first. With gradient clipping every gradient
    counts in the global norm, so none is frozen.
    """
    if clip_norm is not None:
        return None
    first = epoch * steps_per_epoch
    groups = tuple(groups)
    done = []
    for group in groups:
        stop = _window_steps(group, steps_per_epoch)[1]
        done.append(group.lr_scale == 0 or (stop is not None and stop <= first))
    done.append(False)  # the leaves no rule matches
    mask = jax.tree.map(lambda i: done[i], group_labels(params, groups))
    return mask if any(jax.tree.leaves(mask)) else None


def _group_schedule(base, group: ParamGroup, steps_per_epoch: int, total_steps: int):
    """``base`` times the group's ``lr_scale``, and 0 outside its training window (with
    ``anneal_in_window``, ``base`` runs its whole course within the window)."""
    start, stop = _window_steps(group, steps_per_epoch)
    if group.lr_scale == 1 and start == 0 and stop is None:
        return base  # the plain schedule, bit for bit
    stretch = total_steps / max(stop - start, 1) if group.anneal_in_window else None

    def schedule(step):
        at = step if stretch is None else (step - start) * stretch
        lr = base(at) * group.lr_scale
        on = step >= start
        if stop is not None:
            on = on & (step < stop)
        return jnp.where(on, lr, jnp.zeros_like(lr))

    return schedule


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
    param_groups: tuple[ParamGroup, ...] = DEFAULT_PARAM_GROUPS,
    steps_per_epoch: int = 1,
    ema_decay: float | None = None,
    initial_lr_scale: float = 0.2,
    final_lr_scale: float = 0.07,
    lookahead_every: int = 0,
    lookahead_decay: float = 0.95,
) -> optax.GradientTransformation:
    """An optax optimizer with a schedule, decoupled weight decay, parameter groups, optional
    clipping, optional lookahead and an optional moving average of the weights.

    Args:
      name: ``"sgd"`` (Nesterov momentum + decoupled decay) or ``"adamw"``.
      learning_rate: peak learning rate of the schedule.
      schedule: ``"onecycle"``, ``"cosine"``, ``"constant"`` or ``"triangle"`` (see
        :func:`make_schedule`).
      total_steps: number of optimizer steps of the whole run (epochs * steps per epoch).
      warmup_steps: warm-up length; default from :func:`default_warmup_steps`.
      momentum, nesterov: SGD momentum (AdamW ignores these; its b1 is 0.9).
      weight_decay: decoupled decay coefficient (0 disables it) of the leaves whose group does
        not set its own.
      clip_norm: clip gradients to this global norm first (None: no clipping).
      param_groups: :class:`ParamGroup` rules, the first match wins; default
        :data:`DEFAULT_PARAM_GROUPS` (no decay on biases and BatchNorm). ``()``: every leaf
        gets ``learning_rate`` and ``weight_decay``.
      steps_per_epoch: converts the groups' ``start_epoch``/``stop_epoch`` to steps.
      ema_decay: keep an exponential moving average of the weights in the optimizer state
        (:func:`jaxcnn.train.ema.with_ema`; read it with :func:`~jaxcnn.train.ema.ema_params`).
        It averages the params as stored, after any lookahead reset.
      initial_lr_scale, final_lr_scale: start and end of the ``"triangle"`` schedule as
        fractions of ``learning_rate`` (ignored by the other schedules).
      lookahead_every: every this many updates (and after the last, ``total_steps``) the params
        are blended into slow weights kept in the optimizer state and reset to them
        (:func:`jaxcnn.train.ema.with_lookahead`, decay ``lookahead_decay ** lookahead_every *
        (t / total_steps) ** 3`` at update t); 0: off.
      lookahead_decay: the per-step decay of the lookahead, in [0, 1].

    Returns:
      An ``optax.GradientTransformation`` (pure; works under ``jax.vmap`` for ensembles); the
      same object for the same arguments.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
    param_groups = tuple(param_groups)
    if not all(isinstance(g, ParamGroup) for g in param_groups):
        raise ValueError(f"param_groups must be ParamGroup rules, got {param_groups!r}")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or (
        steps_per_epoch < 1
    ):
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be None or in [0, 1), got {ema_decay!r}")
    initial_lr_scale = _check_lr_scale("initial_lr_scale", initial_lr_scale)
    final_lr_scale = _check_lr_scale("final_lr_scale", final_lr_scale)
    check_lookahead(lookahead_every, lookahead_decay)
    return _make_optimizer(
        name, learning_rate, schedule, total_steps, warmup_steps, momentum, nesterov,
        weight_decay, clip_norm, param_groups, steps_per_epoch, ema_decay, initial_lr_scale,
        final_lr_scale, int(lookahead_every), float(lookahead_decay),
    )


def check_lookahead(every, decay) -> None:
    """ValueError unless ``every`` is an int >= 0 and ``decay`` a number in [0, 1]."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"lookahead_every must be an int >= 0 (0: off), got {every!r}")
    if not (_number(decay) and 0 <= decay <= 1):
        raise ValueError(f"lookahead_decay must be a number in [0, 1], got {decay!r}")


@functools.lru_cache(maxsize=64)
def _make_optimizer(
    name, learning_rate, schedule, total_steps, warmup_steps, momentum, nesterov, weight_decay,
    clip_norm, param_groups, steps_per_epoch, ema_decay, initial_lr_scale, final_lr_scale,
    lookahead_every, lookahead_decay,
):
    base = make_schedule(
        schedule,
        learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        initial_lr_scale=initial_lr_scale,
        final_lr_scale=final_lr_scale,
    )

    def group_tx(group: ParamGroup | None) -> optax.GradientTransformation:
        group = group or ParamGroup(".*")
        if group.lr_scale == 0:
            return optax.set_to_zero()  # frozen: bitwise unchanged, no state
        lr = _group_schedule(base, group, steps_per_epoch, total_steps)
        wd = weight_decay if group.weight_decay is None else group.weight_decay
        mu = momentum if group.momentum is None else group.momentum
        if group.optimizer == "muon":
            from jaxcnn.train.muon import muon

            return muon(lr, momentum=mu, nesterov=nesterov)
        if name == "adamw":
            return optax.adamw(lr, weight_decay=wd)
        parts = []
        if mu:
            parts.append(optax.trace(decay=mu, nesterov=nesterov))
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.scale_by_learning_rate(lr))
        return optax.chain(*parts)

    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))  # the global norm of every group
    groups = (*param_groups, None)  # None: the leaves no rule matches
    parts.append(
        optax.multi_transform(
            {i: group_tx(g) for i, g in enumerate(groups)},
            functools.partial(group_labels, groups=param_groups),
        )
    )
    tx = optax.chain(*parts)
    if lookahead_every:
        from jaxcnn.train.ema import with_lookahead

        tx = with_lookahead(tx, lookahead_every, lookahead_decay, total_steps)
    if ema_decay is not None:  # outermost: it averages the params as stored
        from jaxcnn.train.ema import with_ema

        tx = with_ema(tx, ema_decay)
    return tx
