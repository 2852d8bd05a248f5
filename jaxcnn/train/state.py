"""The training state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxcnn.models.summary import check_input_shape


@struct.dataclass
class TrainState:
    """Step counter, weights, BatchNorm statistics, optimizer state and a PRNG key.

    A pytree (``jax.tree`` maps over the array fields), so it can be jit-compiled, sharded,
    checkpointed and ``vmap``-ed across an ensemble's leading model axis.

    Attributes:
      step: int32 scalar, number of optimizer updates applied.
      params: the model's ``params`` collection (float32).
      batch_stats: the ``batch_stats`` collection (BatchNorm running mean/var), ``{}`` if none.
      opt_state: the optax state of ``tx``.
      rng: a ``jax.random.key``; the key of step ``s`` is ``fold_in(rng, s)``, so randomness
        depends only on the seed and the step (a resumed run draws the same numbers).
      apply_fn: the model's ``apply`` (static: not a pytree leaf); a :class:`ModelApply`
        from :func:`create_train_state`, equal for equal models, so that jit reuses the
        programs compiled for an equal model.
      tx: the optax ``GradientTransformation`` (static; :func:`~jaxcnn.train.make_optimizer`
        gives the same object for the same settings, for the same reason).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        """``{"params": ..., "batch_stats": ...}`` for ``apply_fn`` (no batch_stats if empty)."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def step_rng(self) -> jax.Array:
        """The key of the current step: ``fold_in(rng, step)``."""
        return jax.random.fold_in(self.rng, self.step)

    def apply_gradients(self, grads, batch_stats=None) -> TrainState:
        """One optimizer update; ``batch_stats`` replaces the running statistics if given."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(
            step=self.step + 1,
            params=params,
            opt_state=opt_state,
            batch_stats=self.batch_stats if batch_stats is None else batch_stats,
        )


class ModelApply:
    """``model.apply`` that compares (and hashes) by the model's value, not its identity.

    A bound method ``model.apply`` is equal only to the same object's, so a train state of a
    re-created but identical model would be a new static jit argument and compile again.
    """

    __slots__ = ("model",)

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        return self.model.apply(*args, **kwargs)

    def __eq__(self, other):
        if not isinstance(other, ModelApply):
            return False
        if self.model is other.model:
            return True
        try:
            return bool(self.model == other.model)
        except Exception:  # noqa: BLE001 - e.g. an array-valued option: treat as different
            return False

    def __hash__(self):
        try:
            return hash(self.model)
        except TypeError:  # an unhashable option: equal models then miss the cache, no harm
            return id(self.model)

    def __repr__(self):
        return f"ModelApply({type(self.model).__name__})"


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shape: Sequence[int],
    dtype=jnp.float32,
) -> TrainState:
    """Initialise a model and its optimizer.

    Args:
      model: a Flax module following the ``jaxcnn.models`` convention.
      tx: an optax transformation (see :func:`jaxcnn.train.make_optimizer`).
      rng: a ``jax.random.key`` (or legacy uint32 key); split into the init key and the state's
        step key, so one seed fixes both.
      input_shape: (N, H, W, C) of the dummy input used for shape inference (N=1 is enough).
      dtype: dtype of the dummy input (float32; the model's own ``dtype`` sets compute).

    Returns:
      A :class:`TrainState` at step 0. Pure function of ``rng``: works under ``jax.vmap`` over
      a batch of keys (that is how ensembles are built).
    """
    shape = check_input_shape(input_shape)
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)

    params, batch_stats, opt_state, state_key = _jitted_init(model, tx, shape, dtype)(rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rng=state_key,
        apply_fn=ModelApply(model),
        tx=tx,
    )


def _jitted_init(model, tx, shape, dtype):
    """A jitted ``rng -> (params, batch_stats, opt_state, state_key)``, memoised per
    (model, tx, shape, dtype) so repeated inits (ensemble members, resumes) compile once."""
    key = (model, tx, shape, jnp.dtype(dtype).name)
    try:
        return _INIT_CACHE[key]
    except TypeError:  # unhashable model option: no memoisation
        key = None
    except KeyError:
        pass

    def init(rng):
        init_key, state_key = jax.random.split(rng)
        variables = model.init(init_key, jnp.zeros(shape, dtype), train=False)
        params = variables["params"]
        return params, variables.get("batch_stats", {}), tx.init(params), state_key

    fn = jax.jit(init)  # one compiled program instead of hundreds of eager ops
    if key is not None:
        if len(_INIT_CACHE) >= 32:
            _INIT_CACHE.pop(next(iter(_INIT_CACHE)))
        _INIT_CACHE[key] = fn
    return fn


_INIT_CACHE: dict = {}
