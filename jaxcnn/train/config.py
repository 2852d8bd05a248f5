"""``FitConfig``: everything that defines a training run, in one frozen dataclass.

A lesson configures the engine with one (a recipe, see :mod:`jaxcnn.train.recipes`), changes
fields with ``dataclasses.replace`` (or :func:`jaxcnn.train.recipes.with_overrides` from parsed
command-line flags), and hands it to :func:`jaxcnn.train.fit` or
:func:`jaxcnn.train.build`. It is stored in every checkpoint and checked on resume.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jaxcnn.ops._checks import check_precision
from jaxcnn.ops.backend import BACKENDS
from jaxcnn.train.optim import (
    DEFAULT_PARAM_GROUPS,
    OPTIMIZERS,
    SCHEDULES,
    ParamGroup,
    check_lookahead,
)


@dataclass(frozen=True)
class FitConfig:
    """Everything that defines a training run (stored in checkpoints; checked on resume).

    Attributes:
      epochs: number of epochs.
      batch_size: GLOBAL train batch size. It must be divisible by the number of devices: fit
        raises a ValueError naming valid sizes before compiling anything (128 suits 1, 2, 4
        and 8 devices).
      optimizer: ``"sgd"`` (Nesterov, decoupled decay) or ``"adamw"``.
      lr: peak learning rate. schedule: ``"onecycle"``, ``"cosine"``, ``"constant"`` or
        ``"triangle"`` (see :func:`~jaxcnn.train.make_schedule`).
      warmup_epochs: warm-up length in epochs (None: the schedule's default: 30% of the run
        for one-cycle, 5% for cosine, 23% for triangle, none for constant).
      initial_lr_scale, final_lr_scale: used by ``schedule="triangle"`` only (the others ignore
        them): the learning rate rises linearly from ``lr * initial_lr_scale`` at step 0 to
        ``lr`` at the end of the warm-up, then falls linearly to ``lr * final_lr_scale`` at the
        last step. Numbers >= 0; defaults 0.2 and 0.07 (airbench).
      momentum, nesterov, weight_decay, clip_norm: see :func:`~jaxcnn.train.make_optimizer`.
      param_groups: per-parameter-group learning-rate scale, weight decay and training window
        (:class:`~jaxcnn.train.ParamGroup` rules, the first match wins). Default: no weight
        decay on biases and BatchNorm (``DEFAULT_PARAM_GROUPS``). E.g. a stem bias frozen
        after 3 epochs, before the default rule:
        ``(ParamGroup("stem/bias", stop_epoch=3), *DEFAULT_PARAM_GROUPS)``.
      ema_decay: keep an exponential moving average of the weights with this decay (e.g.
        0.999) in the optimizer state (:mod:`jaxcnn.train.ema`); None: no average.
      eval_ema: evaluate (and pick ``best``) on the averaged weights; needs ``ema_decay``.
      lookahead_every: airbench's lookahead (:func:`~jaxcnn.train.ema.with_lookahead`): the
        optimizer state keeps slow weights; after every ``lookahead_every``-th update t, and
        after the last one, they become ``d * slow + (1 - d) * params`` with ``d =
        lookahead_decay ** lookahead_every * (t / total_steps) ** 3``, and the params are
        reset to them. 0 (default): off. Groups with ``lr_scale`` 0 stay bitwise unchanged.
      lookahead_decay: the lookahead's per-step decay, in [0, 1] (default 0.95).
      label_smoothing: cross-entropy label smoothing.
      seed: init, dropout, augmentation and shuffle seed (ensemble member k uses seed + k).
      dtype: compute dtype of the preprocessed input (``"float32"``/``"bfloat16"``); build the
        model with the same ``dtype`` option for bf16 compute.
      ensemble: K > 1 trains K members in one vmapped step.
      augment: on-device augmentation in the train step (never in evaluation), made of:
        crop_pad (reflect-padding of the random crop, 0: none), flip, cutout_size (side of a
        zeroed square, 0: none). The step's :class:`~jaxcnn.train.Preprocess` is built from
        these fields and the normalisation.
      flip: horizontal mirroring when ``augment``: True: each image of each step with
        probability 1/2 (on device, from the step key); False: none; ``"alternate"``
        (airbench): a fixed random half of the training examples (from ``seed``) is mirrored
        in even epochs and the other half in odd epochs, so each image is seen mirrored and
        unmirrored in consecutive epochs (:func:`~jaxcnn.data.alternating_flip_mask`; applied
        by the batch feeds, host and device paths alike, before the random crop).
      init_fn: data-dependent initialisation, ``init_fn(variables, train_images, rng) ->
        variables``, run once on the freshly initialised model before training (not on
        resume: the checkpoint holds its result), e.g. to whiten the first convolution from
        image patches. ``variables``: ``{"params", ["batch_stats"]}`` of one model (each
        ensemble member in turn); ``train_images``: the uint8 training images (N, H, W, C);
        ``rng``: a key derived from the seed. The result must have the same structure and
        shapes (dtypes are cast back); the optimizer state is initialised from it. Stored
        in checkpoints by its qualified name.
      eval_batch_size: evaluation batch, any positive int: it is capped at the eval set's size
        and rounded up to a multiple of the device count (500 runs as 504 on 8 devices); the
        last batch is padded and the padding masked, so no example is dropped or counted twice.
        Not checked on resume.
      log_every: steps between progress-bar updates (the only device syncs in an epoch). Not
        checked on resume.
      keep_checkpoints: how many ``latest`` checkpoints to keep. Not checked on resume.
      data_on_device: where the training batches are assembled. ``True``: the uint8 training
        set is put on every device once and each step gathers its batch there (no per-step
        host gather or host-to-device copy); ``False``: host batches copied every step;
        ``"auto"`` (default): on for GPU/TPU when one copy of the training set takes at most
        ``DEVICE_DATA_FRACTION`` (1/4) of a device's memory, off on CPU (there it measured no
        faster, see ``python -m experiments.bench host``). The same batches in the same order,
        hence the same numbers, either way. Single-process only: with
        ``jax.process_count() > 1`` fit uses the host path. Not checked on resume.
      steps_per_dispatch: device path only: train steps per call (``lax.scan``; unrolled on
        CPU, where XLA runs a rolled loop of the step slower), to cut Python dispatch where it
        shows (fast accelerators, small models). Not checked on resume.
      backend: which kernels compute the layers, one of :data:`jaxcnn.ops.backend.BACKENDS`
        (``"lax"``, ``"fast"``, ``"onednn"``; ``"auto"``, the default: the setting around the
        call (``jaxcnn.ops.backend.use``, else ``$JAXCNN_BACKEND``), else the platform's
        choice). ``fit`` runs its whole body with it (build, compilation, epochs,
        evaluation). A kernel choice, not a hyper-parameter: every backend computes the same
        function, so a run may resume on another one. Not checked on resume.
      matmul_precision: the precision of the products in the convolutions and matrix products,
        entered with ``jax.default_matmul_precision`` for ``fit``'s whole run: ``None`` (the
        default: the setting around the call), ``"float32"`` or ``"bfloat16"`` (operands
        rounded to bfloat16, products accumulated and returned in float32: a TPU's default;
        on a CPU the ``"onednn"`` backend's convolutions then run oneDNN's bfloat16 kernels
        where the CPU has AVX512_BF16 or AMX, see :func:`jaxcnn.ops.onednn.bf16_products`).
        Parameters, activations and optimizer state keep their dtypes. Checked on resume.
      eval_every: evaluate after every this many epochs and after the last (1: each epoch);
        0: never during training (the history's ``eval_*`` are None; a timed run evaluates
        after it, as airbench does). Not checked on resume.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    schedule: str = "onecycle"
    warmup_epochs: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    clip_norm: float | None = None
    param_groups: tuple[ParamGroup, ...] = DEFAULT_PARAM_GROUPS
    ema_decay: float | None = None
    eval_ema: bool = False
    initial_lr_scale: float = 0.2
    final_lr_scale: float = 0.07
    lookahead_every: int = 0
    lookahead_decay: float = 0.95
    label_smoothing: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    ensemble: int = 1
    augment: bool = True
    crop_pad: int = 4
    flip: bool | str = True
    cutout_size: int = 0
    init_fn: Callable | None = None
    eval_batch_size: int = 500
    log_every: int = 20
    keep_checkpoints: int = 2
    data_on_device: bool | str = "auto"
    steps_per_dispatch: int = 1
    backend: str = "auto"
    eval_every: int = 1
    matmul_precision: str | None = None

    # Fields that may change between a run and its resumption (they do not change the numbers,
    # or, for the backend, change only the kernels that compute the same function).
    RESUMABLE_CHANGES = (
        "eval_batch_size",
        "log_every",
        "keep_checkpoints",
        "data_on_device",
        "steps_per_dispatch",
        "backend",
        "eval_every",
    )

    # Fields added after checkpoints were first written: a saved configuration without one was
    # made with its default (whose numbers it reproduces), so resuming such a run still works.
    LATER_FIELDS = ("initial_lr_scale", "final_lr_scale", "lookahead_every", "lookahead_decay",
                    "eval_every", "matmul_precision")

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FitConfig.{name} must be a positive int, got {v!r}")

        for name in (
            "epochs",
            "batch_size",
            "ensemble",
            "eval_batch_size",
            "log_every",
            "steps_per_dispatch",
        ):
            positive_int(name)
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or (
            self.eval_every < 0
        ):
            raise ValueError(f"FitConfig.eval_every must be an int >= 0 (0: no evaluation during "
                             f"training), got {self.eval_every!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"FitConfig.optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"FitConfig.schedule {self.schedule!r} not in {SCHEDULES}")
        if not self.lr > 0:
            raise ValueError(f"FitConfig.lr must be positive, got {self.lr}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"FitConfig.seed must be an int >= 0, got {self.seed!r}")
        check_precision(self.matmul_precision, "FitConfig.matmul_precision")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"FitConfig.dtype must be float32, bfloat16 or float16: {self.dtype!r}"
            )
        for name in ("crop_pad", "cutout_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"FitConfig.{name} must be an int >= 0, got {v!r}")
        if not (isinstance(self.flip, bool) or self.flip == "alternate"):
            raise ValueError(
                f"FitConfig.flip must be True, False or 'alternate', got {self.flip!r}"
            )
        for name in ("initial_lr_scale", "final_lr_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                raise ValueError(f"FitConfig.{name} must be a number >= 0, got {v!r}")
        try:
            check_lookahead(self.lookahead_every, self.lookahead_decay)
        except ValueError as err:
            raise ValueError(f"FitConfig.{err}") from None
        if not (isinstance(self.data_on_device, bool) or self.data_on_device == "auto"):
            raise ValueError(
                "FitConfig.data_on_device must be True, False or 'auto', got "
                f"{self.data_on_device!r}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(
                f"FitConfig.backend must be one of {', '.join(map(repr, BACKENDS))}, got "
                f"{self.backend!r}"
            )
        # Groups read back from JSON (a list of dicts) become ParamGroup rules again.
        groups = tuple(
            ParamGroup(**g) if isinstance(g, dict) else g for g in (self.param_groups or ())
        )
        if not all(isinstance(g, ParamGroup) for g in groups):
            raise ValueError(
                f"FitConfig.param_groups must be ParamGroup rules, got {self.param_groups!r}"
            )
        object.__setattr__(self, "param_groups", groups)
        if self.ema_decay is not None and not (
            isinstance(self.ema_decay, int | float) and 0 <= self.ema_decay < 1
        ):
            raise ValueError(
                f"FitConfig.ema_decay must be None or in [0, 1), got {self.ema_decay!r}"
            )
        if self.eval_ema and self.ema_decay is None:
            raise ValueError("FitConfig.eval_ema needs ema_decay (the weights' moving average)")
        if self.init_fn is not None and not callable(self.init_fn):
            raise ValueError(
                f"FitConfig.init_fn must be a callable or None, got {type(self.init_fn).__name__}"
            )

    @property
    def alternating_flips(self) -> bool:
        """Whether the batch feeds mirror images by :func:`~jaxcnn.data.alternating_flip_mask`
        (``augment`` and ``flip == "alternate"``)."""
        return bool(self.augment) and self.flip == "alternate"

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (groups as dicts, ``init_fn`` as its name)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["param_groups"] = [group_dict(g) for g in self.param_groups]
        out["init_fn"] = callable_name(self.init_fn)
        return out


# ParamGroup fields added after checkpoints were first written: left out of a group's dict
# while they have their default, so older checkpoints' configurations still compare equal.
_LATER_GROUP_FIELDS = {"anneal_in_window": False, "optimizer": None, "momentum": None}


def group_dict(group: ParamGroup) -> dict[str, Any]:
    """A parameter group as a JSON-ready dict (later fields only when not at their default)."""
    return {k: v for k, v in dataclasses.asdict(group).items()
            if k not in _LATER_GROUP_FIELDS or v != _LATER_GROUP_FIELDS[k]}


def callable_name(fn) -> str | None:
    """``module.qualname`` of a function (None for None)."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return f"{callable_name(fn.func)}(*{fn.args!r}, **{fn.keywords!r})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
