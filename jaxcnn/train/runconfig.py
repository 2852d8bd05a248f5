"""What a checkpoint records about its run, and the check that a resumed run is the same run.

Every checkpoint stores the configuration of the run that wrote it (``meta["config"]``, JSON
values). Resuming compares it with the configuration of the run asked for now: any difference
outside the keys that may change (they do not change the numbers, or are a kernel choice) is a
ValueError that names each difference, raised before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.train.config import FitConfig
from jaxcnn.train.steps import Preprocess


def model_signature(model: nn.Module) -> str:
    """A string naming the module class and its configuration (compared on resume)."""
    fields = []
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name"):
            continue
        value = getattr(model, f.name)
        if hasattr(value, "dtype") or isinstance(value, type):
            value = jnp.dtype(value).name
        fields.append(f"{f.name}={value!r}")
    return f"{type(model).__name__}({', '.join(fields)})"


def as_json(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as they read back from a checkpoint (tuples become lists, ...)."""
    return json.loads(json.dumps(values))


def fit_run_config(config: FitConfig, model: nn.Module, preprocess: Preprocess,
                   train_ds) -> dict[str, Any]:
    """What a checkpoint of :func:`jaxcnn.train.fit` records about its run: the config, the
    model, the normalisation and the training set's shape (JSON values)."""
    return as_json({
        **config.to_dict(),
        "model": model_signature(model),
        "normalization": {"mean": list(preprocess.mean), "std": list(preprocess.std)},
        "num_classes": int(train_ds.num_classes),
        "image_shape": list(train_ds.image_shape),
        "train_size": len(train_ds),
    })


def check_resume_config(saved: dict, current: dict, where, *, may_change=(),
                        defaults: dict | None = None) -> None:
    """ValueError naming every key (outside ``may_change``) whose saved value differs from the
    current one; ``where``: the checkpoint or workdir, for the message. ``defaults``: values of
    keys that older checkpoints do not have."""
    saved = {**(defaults or {}), **saved}
    keys = sorted((set(saved) | set(current)) - set(may_change))
    diffs = [k for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        lines = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
        raise ValueError(
            f"cannot resume from {where}: it was made with a different configuration "
            f"({lines}). Use the same settings, a new workdir, or resume=False."
        )


def check_fit_resume(saved: dict, current: dict, where) -> None:
    """:func:`check_resume_config` for a :class:`FitConfig` run: its
    ``RESUMABLE_CHANGES`` may change; its ``LATER_FIELDS`` default when a checkpoint lacks
    them (it was made before they existed, with their defaults)."""
    defaults = FitConfig().to_dict()
    check_resume_config(saved, current, where, may_change=FitConfig.RESUMABLE_CHANGES,
                        defaults={k: defaults[k] for k in FitConfig.LATER_FIELDS})


__all__ = ["as_json", "check_fit_resume", "check_resume_config", "fit_run_config",
           "model_signature"]
