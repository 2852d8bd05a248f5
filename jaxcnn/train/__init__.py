"""Training: TrainState, jit-compiled data-parallel steps, optimizers, ensembles, checkpoints, fit.

* :class:`TrainState` / :func:`create_train_state` -- step, params, batch_stats, opt_state, rng.
* :func:`make_optimizer` / :func:`make_schedule` -- SGD-Nesterov or AdamW with decoupled,
  masked weight decay; one-cycle, cosine or constant schedules.
* :class:`Preprocess`, :func:`make_train_step`, :func:`make_eval_step` -- pure steps with
  on-device augmentation and normalisation.
* :mod:`jaxcnn.train.mesh` -- a ("data",) Mesh: batch sharded, state replicated; BatchNorm
  statistics and gradients are global-batch quantities (synchronised across devices); any
  device count (eval batches padded up to a multiple of it: :func:`padded_batch_size`).
* :mod:`jaxcnn.train.ensemble` -- K seeds trained in one vmapped step.
* :mod:`jaxcnn.train.checkpoint` -- orbax ``latest``/``best`` checkpoints.
* :func:`fit` / :class:`FitConfig` / :func:`evaluate_dataset` -- the training loop; its
  batches come from the host (:class:`HostFeed`) or from a dataset kept on the device
  (:class:`DeviceFeed`, ``FitConfig.data_on_device``), see :func:`make_feed`.
"""

from jaxcnn.train import checkpoint
from jaxcnn.train.ensemble import (
    create_ensemble_state,
    ensemble_size,
    make_ensemble_eval_step,
    make_ensemble_train_step,
    member,
)
from jaxcnn.train.loop import (
    DeviceFeed,
    FitConfig,
    FitResult,
    HostFeed,
    TrainingDiverged,
    evaluate_dataset,
    fit,
    make_feed,
    resolve_data_on_device,
)
from jaxcnn.train.mesh import (
    batch_sharding,
    jit_eval_step,
    jit_indexed_train_step,
    jit_train_step,
    make_mesh,
    maybe_initialize_distributed,
    padded_batch_size,
    replicate,
    replicated,
    shard_batch,
)
from jaxcnn.train.optim import decay_mask, learning_rate_at, make_optimizer, make_schedule
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import (
    Preprocess,
    cross_entropy,
    make_eval_step,
    make_indexed_train_step,
    make_train_step,
)

__all__ = [
    "DeviceFeed",
    "FitConfig",
    "FitResult",
    "HostFeed",
    "Preprocess",
    "TrainState",
    "TrainingDiverged",
    "batch_sharding",
    "checkpoint",
    "create_ensemble_state",
    "create_train_state",
    "cross_entropy",
    "decay_mask",
    "ensemble_size",
    "evaluate_dataset",
    "fit",
    "jit_eval_step",
    "jit_indexed_train_step",
    "jit_train_step",
    "learning_rate_at",
    "make_ensemble_eval_step",
    "make_ensemble_train_step",
    "make_eval_step",
    "make_feed",
    "make_indexed_train_step",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "maybe_initialize_distributed",
    "member",
    "padded_batch_size",
    "replicate",
    "replicated",
    "resolve_data_on_device",
    "shard_batch",
]
