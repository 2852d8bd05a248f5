"""Flax linen models and a registry: ``jaxcnn.models.create("cnn3", num_classes=10)``.

Every model follows one convention (see ``jaxcnn.models.registry``): ``init(rng, x,
train=False)`` with float ``x`` (N, H, W, C); ``apply(..., train=True, rngs={"dropout": key},
mutable=["batch_stats"])`` when training with BatchNorm; a ``dtype`` option for the compute dtype
with float32 params and float32 logits; ``return_features=True`` (or ``method="features"``) for
the representation before the classifier, which is a Dense named ``head``.

Model files in this package register themselves on import; every public module here is
imported below, so a new family only needs a new file with ``@register("name")``.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from jaxcnn.models.registry import (
    accepted_options,
    available,
    create,
    register,
    supported_options,
)
from jaxcnn.models.summary import count_params, init_shapes, param_counts, summary

for _info in _pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in ("registry", "summary"):
        _importlib.import_module(f"{__name__}.{_info.name}")

from jaxcnn.models.airbench import AirBench94  # noqa: E402
from jaxcnn.models.cnn3 import CNN3  # noqa: E402
from jaxcnn.models.mlp import MLP  # noqa: E402

__all__ = [
    "AirBench94",
    "CNN3",
    "MLP",
    "accepted_options",
    "available",
    "count_params",
    "create",
    "init_shapes",
    "param_counts",
    "register",
    "summary",
    "supported_options",
]
