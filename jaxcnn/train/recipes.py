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
20 epochs. :func:`for_model` gives cnn3's recipe to models without their own.

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
