"""Training recipes of the course's models: named :class:`FitConfig`\\ s.

::

    from jaxcnn.train import fit, recipes

    config = recipes.get("cnn3")                              # the documented CIFAR-10 recipe
    config = dataclasses.replace(config, epochs=10)           # change fields ...
    config = recipes.with_overrides(config, args)             # ... or take them from flags

``cnn3`` (the CIFAR-10 result of the README, >= 88% in 30 epochs): SGD with Nesterov momentum
0.9 and decoupled weight decay 5e-4 (not on biases and BatchNorm), a one-cycle learning rate
peaking at 0.1, label smoothing 0.1, random crop (4-pixel reflect padding) and horizontal
flips, 30 epochs, batch 128. ``mlp``: AdamW (1e-3, weight decay 1e-4), cosine schedule, no
augmentation (an MLP has no translation invariance: shifted images only make its task harder),
20 epochs. ``airbench94_muon`` (the speedrun's default, ``python -m experiments.speedrun``;
the 2024 record's recipe): the registry's ``airbench94_muon`` net trained 9 epochs at batch 2000
(the record: 8 on 50,000 images, the same number of steps as 9 on 45,000), its 3x3 conv
filters with Muon (:mod:`jaxcnn.train.muon`, lr 0.24, momentum 0.6) and the biases, BatchNorm
and head with Nesterov SGD (momentum 0.85), every rate decaying linearly to 0; whitening,
identity init, alternating flips and label smoothing as ``airbench94``, no lookahead.
``airbench94`` (``speedrun --recipe airbench94``): Keller Jordan's earlier airbench recipe for
the registry's ``airbench94`` net: Nesterov SGD (momentum 0.85) at batch 1024 with a triangular
learning rate, label smoothing 0.2, the first layer whitened from the training patches and
frozen (its bias trained for 3 epochs), BatchNorm biases at 64x the learning rate, lookahead
every 5 steps, 2-pixel crops and alternating flips, 10 epochs.
:func:`for_model` gives cnn3's recipe to models without their own.

Command-line flags reach a recipe through :func:`with_overrides`: a lesson names each flag's
``dest`` after the FitConfig field it sets (``--weight-decay`` -> ``weight_decay``, ``--cutout``
-> ``cutout_size``) and leaves its default None when the recipe should decide.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxcnn.train.config import FitConfig
from jaxcnn.train.optim import ParamGroup

# airbench94's weight decay, converted to this engine's units. airbench (PyTorch) sums the loss
# over a batch of 1024 and decays through the momentum buffer; here the loss is the batch mean
# and the decay is decoupled (``w -= lr_t * lr_scale * wd * w``). Both give the same shrink per
# step at the peak learning rate: 0.0153 * 1024 / 7850.7 / (1 - 0.85) = 0.0133.
_AIRBENCH_LR = 1.5  # 11.5 / 7850.7 per summed loss, times the batch of 1024
_AIRBENCH_DECAY_PER_STEP = 0.0153 / (1 + 1 / (1 - 0.85)) / (1 - 0.85)  # batch 1024 cancels
_AIRBENCH_BIAS_LR_SCALE = 64.0


def _airbench94() -> FitConfig:
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.models.airbench import make_whitening_init

    return FitConfig(
        epochs=10,
        batch_size=1024,
        optimizer="sgd",
        lr=_AIRBENCH_LR,
        schedule="triangle",
        initial_lr_scale=0.2,
        final_lr_scale=0.07,
        momentum=0.85,
        nesterov=True,
        weight_decay=_AIRBENCH_DECAY_PER_STEP / _AIRBENCH_LR,
        param_groups=(
            ParamGroup("^whiten/kernel", lr_scale=0.0),  # the whitening filters stay fixed
            ParamGroup("^whiten/bias", stop_epoch=3),
            ParamGroup("norm", lr_scale=_AIRBENCH_BIAS_LR_SCALE,
                       weight_decay=_AIRBENCH_DECAY_PER_STEP
                       / (_AIRBENCH_LR * _AIRBENCH_BIAS_LR_SCALE)),
        ),
        lookahead_every=5,
        lookahead_decay=0.95,
        label_smoothing=0.2,
        augment=True,
        crop_pad=2,
        flip="alternate",
        cutout_size=0,
        init_fn=make_whitening_init(CIFAR10_MEAN, CIFAR10_STD),
        eval_batch_size=1000,
    )

# airbench94_muon (Keller Jordan, 2024: 94.01% in 8 epochs), in this engine's units. It sums the
# loss over a batch of 2000, so its SGD learning rates are 2000x larger per mean loss here. Its
# weight decay (2e-6 x 2000 per summed-loss step, through Nesterov momentum 0.85) shrinks the
# weights by 0.004 / (1 - 0.85) per step at the peak rate; here that is lr_peak x wd.
_MUON_BATCH = 2000
_MUON_BIAS_LR = 0.053 * _MUON_BATCH  # the run's lr: BatchNorm biases and the whitening bias
_MUON_HEAD_LR = 0.67 * _MUON_BATCH
_MUON_FILTER_LR = 0.24  # Muon's step: orthogonalised, so independent of the loss's scale
_MUON_DECAY_PER_STEP = 2e-6 * _MUON_BATCH / (1 - 0.85)


# The record trains 8 epochs of 25 steps (50,000 images): 200 steps. Here 9: on the 45,000
# images a held-out split leaves, 9 epochs are 198 steps (8 reached 93.75%, 9 94.06%, two
# seeds each, float32; 94.27% with bfloat16 products, visuals/speedrun/README.md); on 50,000
# images they are 225 steps, 12.5% more work than the record.
_MUON_EPOCHS = 9


def _airbench94_muon() -> FitConfig:
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.models.airbench import make_whitening_init

    return FitConfig(
        epochs=_MUON_EPOCHS,
        batch_size=_MUON_BATCH,
        optimizer="sgd",
        lr=_MUON_BIAS_LR,
        schedule="triangle",  # no warm-up, linear decay to 0 at the last step
        warmup_epochs=0,
        final_lr_scale=0.0,
        momentum=0.85,
        nesterov=True,
        weight_decay=_MUON_DECAY_PER_STEP / _MUON_BIAS_LR,
        param_groups=(
            ParamGroup("^whiten/kernel", lr_scale=0.0),  # the whitening filters stay fixed
            # trained for 3 epochs, its rate decaying to 0 over those 3
            ParamGroup("^whiten/bias", stop_epoch=3, anneal_in_window=True),
            ParamGroup("norm"),  # the BatchNorm biases: the run's settings
            ParamGroup("^head/", lr_scale=_MUON_HEAD_LR / _MUON_BIAS_LR,
                       weight_decay=_MUON_DECAY_PER_STEP / _MUON_HEAD_LR),
            # every other kernel is a 3x3 conv filter bank: Muon
            ParamGroup("ndim>=2", optimizer="muon", lr_scale=_MUON_FILTER_LR / _MUON_BIAS_LR,
                       momentum=0.6, weight_decay=0.0),
        ),
        label_smoothing=0.2,
        augment=True,
        crop_pad=2,
        flip="alternate",
        cutout_size=0,
        init_fn=make_whitening_init(CIFAR10_MEAN, CIFAR10_STD),
        eval_batch_size=1000,
    )


RECIPES: dict[str, FitConfig] = {
    "cnn3": FitConfig(
        epochs=30,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        schedule="onecycle",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        label_smoothing=0.1,
        augment=True,
        crop_pad=4,
        flip=True,
        cutout_size=0,
    ),
    "mlp": FitConfig(
        epochs=20,
        batch_size=128,
        optimizer="adamw",
        lr=1e-3,
        schedule="cosine",
        weight_decay=1e-4,
        label_smoothing=0.0,
        augment=False,
        cutout_size=0,
    ),
    "airbench94": _airbench94(),
    "airbench94_muon": _airbench94_muon(),
}

# The recipe of a model without its own (see for_model).
GENERIC = "cnn3"


def available() -> list[str]:
    """The names :func:`get` knows."""
    return sorted(RECIPES)


def get(name: str) -> FitConfig:
    """The recipe called ``name``; ValueError naming the available ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"no recipe called {name!r}; available: {', '.join(available())}"
        ) from None


def for_model(model_name: str) -> FitConfig:
    """``model_name``'s recipe, or the generic (cnn3's) one for a model without its own."""
    return RECIPES.get(model_name, RECIPES[GENERIC])


def with_overrides(
    config: FitConfig, values: Mapping[str, Any] | argparse.Namespace
) -> FitConfig:
    """``config`` with every field that ``values`` gives a non-None value replaced.

    Args:
      config: the recipe.
      values: parsed flags (an ``argparse.Namespace``) or a dict. Only names of FitConfig
        fields count (others, like ``workdir``, are ignored); None means "not given".

    Returns:
      ``dataclasses.replace(config, **those values)`` (checked like any FitConfig).
    """
    items = vars(values) if isinstance(values, argparse.Namespace) else dict(values)
    names = {f.name for f in dataclasses.fields(FitConfig)}
    changes = {k: v for k, v in items.items() if k in names and v is not None}
    return dataclasses.replace(config, **changes)
