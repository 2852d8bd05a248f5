"""Training: the one engine every lesson configures (docs/design.md, "One engine").

* :class:`FitConfig` -- everything that defines a run; :mod:`jaxcnn.train.recipes` -- the
  course's models' configs (``recipes.get("cnn3")``) and command-line overrides.
* :func:`build` -- the one builder: model + config + training set -> :class:`Engine` (starting
  state, jitted train/eval steps, preprocessing, schedule); used by :func:`fit` and the
  benchmarks, its compiled programs reused across calls.
* :func:`fit` -- the training loop (:mod:`~jaxcnn.train.loop`), made of the phases of
  :mod:`~jaxcnn.train.phases` (restore or start, run an epoch, evaluate, record, save:
  checkpoints, resume, ``metrics.jsonl``), which :mod:`jaxcnn.transfer`'s runs share; its
  batches come from the host (:class:`HostFeed`) or from a dataset kept on the device
  (:class:`DeviceFeed`, ``FitConfig.data_on_device``), see :func:`make_feed`
  (:mod:`~jaxcnn.train.feeds`). :func:`evaluate_dataset` (:mod:`~jaxcnn.train.evaluation`).
* :class:`TrainState` / :func:`create_train_state` -- step, params, batch_stats, opt_state, rng.
* :func:`make_optimizer` / :func:`make_schedule` / :class:`ParamGroup` -- SGD-Nesterov or AdamW
  with decoupled weight decay; per-group learning-rate scale, weight decay and training window
  (default: no decay on biases/BatchNorm); one-cycle, cosine, constant or triangle schedules;
  optional lookahead and EMA of the weights (:mod:`jaxcnn.train.ema`).
* :class:`Preprocess`, :func:`make_train_step`, :func:`make_eval_step` -- pure steps with
  on-device augmentation and normalisation.
* :mod:`jaxcnn.train.mesh` -- a ("data",) Mesh: batch sharded, state replicated; BatchNorm
  statistics and gradients are global-batch quantities (synchronised across devices); any
  device count (eval batches padded up to a multiple of it: :func:`padded_batch_size`).
* :mod:`jaxcnn.train.ensemble` -- K seeds trained in one vmapped step.
* :mod:`jaxcnn.train.checkpoint` -- orbax ``latest``/``best`` checkpoints.
"""

from jaxcnn.train import checkpoint, recipes
from jaxcnn.train.builder import Engine, build, make_fit_optimizer, make_preprocess
from jaxcnn.train.config import FitConfig
from jaxcnn.train.ema import (
    ema_params,
    lookahead_params,
    with_ema,
    with_ema_params,
    with_lookahead,
)
from jaxcnn.train.ensemble import (
    create_ensemble_state,
    ensemble_size,
    make_ensemble_eval_step,
    make_ensemble_train_step,
    member,
)
from jaxcnn.train.evaluation import evaluate_dataset
from jaxcnn.train.feeds import DeviceFeed, HostFeed, make_feed, resolve_data_on_device
from jaxcnn.train.loop import FitResult, fit
from jaxcnn.train.mesh import (
    batch_sharding,
    jit_eval_step,
    jit_indexed_train_step,
    jit_train_step,
    make_mesh,
    padded_batch_size,
    replicate,
    replicated,
    shard_batch,
)
from jaxcnn.train.optim import (
    DEFAULT_PARAM_GROUPS,
    ParamGroup,
    decay_mask,
    learning_rate_at,
    make_optimizer,
    make_schedule,
)
from jaxcnn.train.phases import TrainingDiverged
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import (
    Preprocess,
    cross_entropy,
    make_eval_step,
    make_indexed_train_step,
    make_train_step,
)

__all__ = [
    "DEFAULT_PARAM_GROUPS",
    "DeviceFeed",
    "Engine",
    "FitConfig",
    "FitResult",
    "HostFeed",
    "ParamGroup",
    "Preprocess",
    "TrainState",
    "TrainingDiverged",
    "batch_sharding",
    "build",
    "checkpoint",
    "create_ensemble_state",
    "create_train_state",
    "cross_entropy",
    "decay_mask",
    "ema_params",
    "ensemble_size",
    "evaluate_dataset",
    "fit",
    "jit_eval_step",
    "jit_indexed_train_step",
    "jit_train_step",
    "learning_rate_at",
    "lookahead_params",
    "make_ensemble_eval_step",
    "make_ensemble_train_step",
    "make_eval_step",
    "make_feed",
    "make_fit_optimizer",
    "make_indexed_train_step",
    "make_mesh",
    "make_optimizer",
    "make_preprocess",
    "make_schedule",
    "make_train_step",
    "member",
    "padded_batch_size",
    "recipes",
    "replicate",
    "replicated",
    "resolve_data_on_device",
    "shard_batch",
    "with_ema",
    "with_ema_params",
    "with_lookahead",
]
