"""The engine's one builder: a model, a :class:`FitConfig` and a training set in; the starting
state and the compiled steps out. :func:`jaxcnn.train.fit` trains with what it builds, and
``python -m experiments.bench train`` times the very same programs.

::

    engine = build(model, config, train_ds)   # normalisation: the set's channel mean/std
    state = engine.state                       # replicated on the mesh, step 0
    state, metrics = engine.train_step(state, *shard_batch(engine.mesh, images, labels))
    sums = engine.eval_step(state, *shard_batch(engine.mesh, images, labels, mask))

What it puts together, all from the config: the :class:`Preprocess` (normalisation + the
config's augmentation), the optimizer (:func:`make_optimizer`: schedule, parameter groups,
lookahead, EMA), the state (one model, or an ensemble on a leading axis; then the ``init_fn``
hook, or the arrays of a checkpoint), and the jitted steps for the ("data",) mesh.

Compiled programs are reused across calls in one process: the steps are memoised on their
static configuration, the optimizer on its settings (the same optax object for the same
config) and the state's ``apply_fn`` compares equal for equal models. So building again with
the same config (a second ``fit``, a resume, another seed) compiles nothing new.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxcnn.train import checkpoint
from jaxcnn.train.config import FitConfig
from jaxcnn.train.ensemble import (
    create_ensemble_state,
    make_ensemble_eval_step,
    make_ensemble_train_step,
)
from jaxcnn.train.mesh import (
    batch_sharding,
    check_batch_size,
    jit_eval_step,
    jit_indexed_train_step,
    jit_train_step,
    make_mesh,
    replicate,
)
from jaxcnn.train.optim import frozen_leaves, make_optimizer, make_schedule
from jaxcnn.train.runconfig import check_fit_resume, fit_run_config
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import (
    Preprocess,
    make_eval_step,
    make_indexed_train_step,
    make_train_step,
)

# fold_in stream of the key handed to FitConfig.init_fn (the step keys use the step numbers).
INIT_FN_STREAM = 0x1217


@dataclass
class Engine:
    """What :func:`build` returns.

    Attributes:
      state: the starting TrainState, replicated on ``mesh`` (an ensemble: leading model
        axis). The train steps donate their input state: use the state they return.
      train_step: jitted ``(state, images, labels) -> (state, metrics)`` on batches sharded
        over the mesh (:func:`~jaxcnn.train.shard_batch`), ``metrics`` ``{"loss",
        "accuracy"}``.
      eval_step: jitted ``(state, images, labels, mask) -> {"loss_sum", "correct", "count",
        "logits"}`` (plus ``ensemble_*`` for an ensemble).
      indexed_step: jitted ``(state, images_all, labels_all, idx) -> (state, metrics)``: K
        steps on batches gathered on the device (``FitConfig.data_on_device``); with
        alternating flips (``preprocess.alternating_flips``) it takes a fifth argument, the
        ``(K, B)`` bool mask of the rows to mirror
        (:func:`~jaxcnn.data.alternating_flip_mask`).
      preprocess: normalisation and the config's augmentation, as the steps apply them.
      schedule: ``step -> learning rate`` of the schedule (before any group's scale).
      tx: the optax optimizer in ``state.tx``.
      config, mesh, steps_per_epoch: what it was built for.
      steps_at: ``epoch -> (train_step, indexed_step)``, see :meth:`train_steps_for`.
      run_config: what a checkpoint of the run records (the config, the model, the
        normalisation, the training set's shape: :func:`~jaxcnn.train.runconfig.
        fit_run_config`), compared on resume.
    """

    state: TrainState
    train_step: Callable
    eval_step: Callable
    indexed_step: Callable
    preprocess: Preprocess
    schedule: Callable
    tx: optax.GradientTransformation
    config: FitConfig
    mesh: Mesh
    steps_per_epoch: int
    run_config: dict
    steps_at: Callable[[int], tuple[Callable, Callable]] | None = None

    def train_steps_for(self, epoch: int) -> tuple[Callable, Callable]:
        """``(train_step, indexed_step)`` for epoch ``epoch``: the steps above, except that the
        leaves whose training window has ended by then are not differentiated
        (:func:`~jaxcnn.train.optim.frozen_leaves`: airbench's whitening bias after epoch 3),
        which changes no update and saves their share of the backward pass."""
        return (self.train_step, self.indexed_step) if self.steps_at is None else (
            self.steps_at(epoch))

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch


def check_inputs(model: nn.Module, config: FitConfig, train_ds, mesh: Mesh) -> int:
    """ValueError for a bad config, dataset, class count or batch size (before anything is
    compiled); returns the number of train steps per epoch."""
    from jaxcnn.data import num_batches

    if not isinstance(config, FitConfig):
        raise ValueError(f"config must be a FitConfig, got {type(config).__name__}")
    if not (hasattr(train_ds, "images") and hasattr(train_ds, "labels")):
        raise ValueError(f"train_ds must be an ArrayDataset, got {type(train_ds).__name__}")
    num_classes = int(train_ds.num_classes)
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(
            f"model has num_classes={model.num_classes} but the data has {num_classes} classes; "
            f"create the model with num_classes={num_classes}"
        )
    steps_per_epoch = num_batches(len(train_ds), config.batch_size, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training set ({len(train_ds)} "
            "examples); use a smaller batch_size"
        )
    check_batch_size(config.batch_size, mesh)
    return steps_per_epoch


def resolve_normalization(normalization, train_ds) -> tuple:
    """``normalization`` as ``(mean, std)``; None: the per-channel mean and std (std at least
    1e-3) of the training set, in [0, 1] units."""
    if normalization is None:
        from jaxcnn.data import channel_stats

        mean, std = channel_stats(train_ds.images)
        return tuple(float(m) for m in mean), tuple(float(s) for s in np.maximum(std, 1e-3))
    if not (isinstance(normalization, tuple | list) and len(normalization) == 2):
        raise ValueError(
            f"normalization must be (mean, std), per-channel values in [0, 1] units, got "
            f"{normalization!r}"
        )
    return tuple(normalization)


def make_preprocess(config: FitConfig, mean, std) -> Preprocess:
    """The steps' :class:`Preprocess`: normalisation ``(x / 255 - mean) / std`` and the
    config's augmentation and dtype (``flip="alternate"``: no random flip in the step, the
    feeds mirror the batches)."""
    return Preprocess(
        mean=tuple(mean),
        std=tuple(std),
        augment=config.augment,
        crop_pad=config.crop_pad,
        flip=config.flip,
        cutout_size=config.cutout_size,
        dtype=config.dtype,
    )


def make_fit_optimizer(
    config: FitConfig, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, Callable]:
    """``(tx, schedule)`` of a config for runs of ``steps_per_epoch`` steps per epoch: the
    optimizer (the same object for the same arguments) and its learning-rate schedule."""
    total_steps = config.epochs * steps_per_epoch
    warmup = (
        None
        if config.warmup_epochs is None
        else min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps - 1)
    )
    # The optimizer builds the same schedule from the same arguments.
    schedule_args = dict(
        total_steps=total_steps,
        warmup_steps=warmup,
        initial_lr_scale=config.initial_lr_scale,
        final_lr_scale=config.final_lr_scale,
    )
    schedule = make_schedule(config.schedule, config.lr, **schedule_args)
    tx = make_optimizer(
        config.optimizer,
        config.lr,
        schedule=config.schedule,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        param_groups=config.param_groups,
        steps_per_epoch=steps_per_epoch,
        ema_decay=config.ema_decay,
        lookahead_every=config.lookahead_every,
        lookahead_decay=config.lookahead_decay,
        **schedule_args,
    )
    return tx, schedule


def member_seeds(config: FitConfig) -> list[int]:
    """The seed of each model: ``seed``, or ``seed + k`` for ensemble member k."""
    return [config.seed + k for k in range(config.ensemble)]


def build(
    model: nn.Module,
    config: FitConfig,
    train_ds,
    *,
    normalization: tuple | None = None,
    mesh: Mesh | None = None,
    restore: tuple[dict, dict] | None = None,
) -> Engine:
    """Build the state and compiled steps that train ``model`` on ``train_ds`` with ``config``.

    Args:
      model: a ``jaxcnn.models`` module (its ``num_classes`` must match the data).
      config: the :class:`FitConfig` (optimizer, groups, EMA, augmentation, ensemble,
        ``init_fn``, ...).
      train_ds: the ``ArrayDataset`` to train on: its image shape, class count and size (steps
        per epoch, hence the schedule) shape the run; ``init_fn`` sees its images.
      normalization: ``(mean, std)`` per channel in [0, 1] units; default: the training set's
        own (:func:`resolve_normalization`).
      mesh: default :func:`make_mesh` (every device).
      restore: a checkpoint to start from instead of a fresh init, as
        ``checkpoint.restore(workdir)`` returns it: ``(arrays, meta)``. Its saved
        configuration must be this run's (``FitConfig.RESUMABLE_CHANGES`` aside): a
        ValueError naming the differences otherwise, before anything is compiled.
        ``init_fn`` is then not run (its result is in the checkpoint).

    Returns:
      An :class:`Engine` (``state``, ``train_step``, ``eval_step``, ...).
    """
    mesh = make_mesh() if mesh is None else mesh
    steps_per_epoch = check_inputs(model, config, train_ds, mesh)
    preprocess = make_preprocess(config, *resolve_normalization(normalization, train_ds))
    run_config = fit_run_config(config, model, preprocess, train_ds)
    if restore is not None:
        saved = restore[1]
        check_fit_resume(saved.get("config", {}), run_config,
                         f"the checkpoint of epoch {saved.get('epoch')}")
    tx, schedule = make_fit_optimizer(config, steps_per_epoch)
    input_shape = (1, *train_ds.image_shape)
    ensemble = config.ensemble > 1
    if ensemble:
        state = create_ensemble_state(model, tx, member_seeds(config), input_shape)
    else:
        state = create_train_state(model, tx, jax.random.key(config.seed), input_shape)
    if restore is not None:
        state = checkpoint.tree_to_state(state, restore[0])
    elif config.init_fn is not None:
        state = run_init_fn(config, state, train_ds.images)
    num_classes = int(train_ds.num_classes)
    # one model's parameter shapes (the groups match some leaves by ndim)
    shapes = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape[1:] if ensemble else a.shape, a.dtype),
        state.params)

    def steps_at(epoch: int):
        mask = frozen_leaves(shapes, config.param_groups, epoch, steps_per_epoch,
                             config.clip_norm)
        if mask is not None:
            leaves, treedef = jax.tree.flatten(mask)
            mask = (treedef, tuple(leaves))
        return jitted_train_steps(preprocess, config.label_smoothing, num_classes, mesh,
                                  ensemble, mask)

    train_step, indexed_step = steps_at(0)
    return Engine(
        state=replicate(state, mesh),
        train_step=train_step,
        eval_step=jitted_eval_step(preprocess, num_classes, mesh, ensemble),
        indexed_step=indexed_step,
        steps_at=steps_at,
        preprocess=preprocess,
        schedule=schedule,
        tx=tx,
        config=config,
        mesh=mesh,
        steps_per_epoch=steps_per_epoch,
        run_config=run_config,
    )


def run_init_fn(config: FitConfig, state: TrainState, train_images) -> TrainState:
    """``state`` after ``config.init_fn`` (each ensemble member with its own key), with the
    optimizer state initialised from the new params (an EMA starts at them)."""
    fn = config.init_fn
    images = np.asarray(train_images)
    ensemble = config.ensemble > 1
    outputs = []
    for k, seed in enumerate(member_seeds(config)):
        one = jax.tree.map(lambda a, k=k: a[k], state) if ensemble else state
        key = jax.random.fold_in(jax.random.key(seed), INIT_FN_STREAM)
        new = fn(one.variables, images, key)
        outputs.append(_checked_variables(new, one.variables, fn))
    if ensemble:
        variables = jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)
        opt_state = _jit_vmap_init(state.tx)(variables["params"])
    else:
        variables = outputs[0]
        opt_state = _jit_init(state.tx)(variables["params"])
    return state.replace(
        params=variables["params"],
        batch_stats=variables.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )


def _checked_variables(new, old, fn) -> dict:
    from jaxcnn.train.config import callable_name

    name = callable_name(fn)
    if not isinstance(new, dict) or "params" not in new:
        raise ValueError(f"init_fn {name} must return a variables dict with 'params', got "
                         f"{type(new).__name__}")
    new = {k: new[k] for k in old if k in new}
    if jax.tree.structure(new) != jax.tree.structure(old):
        raise ValueError(f"init_fn {name} returned variables of another structure than the "
                         "model's (add or remove no parameters)")
    shapes_new = [np.shape(a) for a in jax.tree.leaves(new)]
    shapes_old = [np.shape(a) for a in jax.tree.leaves(old)]
    if shapes_new != shapes_old:
        bad = next((n, o) for n, o in zip(shapes_new, shapes_old, strict=True) if n != o)
        raise ValueError(f"init_fn {name} changed an array's shape from {bad[1]} to {bad[0]}")
    return jax.tree.map(lambda n, o: jnp.asarray(n, o.dtype), new, old)


@functools.lru_cache(maxsize=16)
def _jit_init(tx):
    return jax.jit(tx.init)


@functools.lru_cache(maxsize=16)
def _jit_vmap_init(tx):
    return jax.jit(jax.vmap(tx.init))


def _on_cpu(mesh: Mesh) -> bool:
    return any(d.platform == "cpu" for d in mesh.devices.flat)


@functools.lru_cache(maxsize=16)
def jitted_train_steps(preprocess, label_smoothing, num_classes, mesh, ensemble: bool,
                       frozen: tuple | None = None):
    """Jitted ``(train_step, indexed_step)``, memoised on their static configuration so that
    repeated builds in one process reuse the compiled programs. ``frozen``: None, or
    ``(treedef, leaves)`` of the step's ``frozen`` mask (hashable)."""
    make = make_ensemble_train_step if ensemble else make_train_step
    mask = None if frozen is None else jax.tree.unflatten(*frozen)
    train = make(preprocess, label_smoothing=label_smoothing, num_classes=num_classes,
                 frozen=mask)
    # XLA:CPU runs a rolled scan of the step much slower than separate calls: unroll it there.
    indexed = make_indexed_train_step(
        train, batch_sharding=batch_sharding(mesh), unroll=_on_cpu(mesh)
    )
    flips = preprocess is not None and preprocess.alternating_flips
    return jit_train_step(train, mesh), jit_indexed_train_step(indexed, mesh, flips=flips)


def jitted_eval_step(preprocess: Preprocess, num_classes, mesh, ensemble: bool):
    """The jitted eval step (memoised; only the normalisation of ``preprocess`` matters)."""
    return _jitted_eval_step(dataclasses.replace(preprocess, augment=False), num_classes, mesh,
                             ensemble)


@functools.lru_cache(maxsize=16)
def _jitted_eval_step(preprocess, num_classes, mesh, ensemble):
    make = make_ensemble_eval_step if ensemble else make_eval_step
    return jit_eval_step(make(preprocess, num_classes=num_classes), mesh)
