"""Training recipes shared by more than one lesson (lessons do not import each other).

``CIFAR10_RECIPES``: the recipe per model of ``python -m experiments.cifar10`` (its flags
override every key); ``python -m experiments.bench train`` times each model's training step
with the same recipe. Models without an entry use ``CIFAR10_GENERIC_RECIPE`` (cnn3's).
"""

from __future__ import annotations

CIFAR10_RECIPES: dict[str, dict] = {
    "mlp": dict(
        epochs=20, lr=1e-3, optimizer="adamw", schedule="cosine", weight_decay=1e-4,
        label_smoothing=0.0, augment=False, cutout=0,
    ),
    "cnn3": dict(
        epochs=30, lr=0.1, optimizer="sgd", schedule="onecycle", weight_decay=5e-4,
        label_smoothing=0.1, augment=True, cutout=0,
    ),
}
CIFAR10_GENERIC_RECIPE = CIFAR10_RECIPES["cnn3"]


def cifar10_recipe(model_name: str) -> dict:
    """A copy of ``model_name``'s CIFAR-10 recipe (cnn3's for a model without its own)."""
    return dict(CIFAR10_RECIPES.get(model_name, CIFAR10_GENERIC_RECIPE))
