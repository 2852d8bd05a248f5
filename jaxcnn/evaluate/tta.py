"""Test-time augmentation (TTA): average a model's logits over a few mirrored and shifted views
of each image, the way airbench evaluates its CIFAR-10 speedrun nets.

Three levels, from cheapest to strongest (``TTA_MODES``):

``"none"``
    ``f(x)``: one view.
``"flip"``
    ``0.5 f(x) + 0.5 f(mirror(x))``: the image and its horizontal mirror (2 views; airbench's
    level 1). Training augments with random flips, so both views are in-distribution.
``"flip_translate"``
    ``0.5 flip(x) + 0.25 flip(t_a) + 0.25 flip(t_b)`` (6 views; airbench's level 2), where
    ``flip`` is the level above, ``p`` is ``x`` reflect-padded by one pixel on H and W,
    ``t_a = p[:, 0:H, 0:W]`` (the crop window moved one pixel up-left: ``t_a[i, j] =
    x[i-1, j-1]``) and ``t_b = p[:, 2:H+2, 2:W+2]`` (moved down-right: ``x[i+1, j+1]``), edges
    reflected: training's pad-and-crop at its two diagonal one-pixel offsets.

The views are fixed (no randomness), so TTA is deterministic and a bundle that stores its mode
reproduces its reported accuracy exactly. ``tta_logits`` is pure: under ``jax.jit`` each view is
one batched forward pass over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

__all__ = ["TTA_MODES", "check_tta_mode", "describe_tta_modes", "tta_logits", "tta_views"]

_DESCRIPTIONS = {
    "none": "one pass",
    "flip": "the image and its mirror, logits averaged (2 passes)",
    "flip_translate": "also one-pixel diagonal shifts of both (airbench's level 2, 6 passes)",
}

TTA_MODES = tuple(_DESCRIPTIONS)
"""The TTA levels, cheapest first: 1, 2 and 6 forward passes per image."""


def describe_tta_modes() -> str:
    """Every mode of ``TTA_MODES`` with what it does, for a command line's ``--help``:
    ``"none: one pass; flip: ...; flip_translate: ..."``."""
    return "; ".join(f"{mode}: {text}" for mode, text in _DESCRIPTIONS.items())


def check_tta_mode(mode) -> str:
    """``mode`` if it is one of ``TTA_MODES``, else ``ValueError`` naming the valid ones."""
    if not isinstance(mode, str) or mode not in TTA_MODES:
        raise ValueError(
            f"unknown TTA mode {mode!r}; expected one of {', '.join(map(repr, TTA_MODES))}"
        )
    return mode


def _mirror(x):
    """Horizontal mirror of ``x: (N, H, W, C)`` (the W axis reversed)."""
    return x[:, :, ::-1]


def _translations(x):
    """The two one-pixel diagonal shifts of ``x: (N, H, W, C)``, each ``(N, H, W, C)``.

    ``x`` is reflect-padded by one pixel on H and W (``p: (N, H+2, W+2, C)``, the edge pixel not
    repeated: PyTorch's and numpy's "reflect"), then cropped back at offsets (0, 0) and (2, 2).
    """
    h, w = x.shape[1], x.shape[2]
    if h < 2 or w < 2:
        raise ValueError(
            f"TTA 'flip_translate' reflect-pads by one pixel and needs images of at least 2x2, "
            f"got {h}x{w}; use tta='flip' or 'none'"
        )
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return p[:, 0:h, 0:w], p[:, 2 : h + 2, 2 : w + 2]


def tta_views(x, mode: str) -> list[tuple[float, jnp.ndarray]]:
    """The views of ``x`` that TTA ``mode`` averages, with their weights (summing to 1).

    Args:
      x: normalised float inputs ``(N, H, W, C)``.
      mode: one of ``TTA_MODES``.

    Returns:
      ``[(weight, view (N, H, W, C)), ...]``: 1, 2 or 6 views.
    """
    check_tta_mode(mode)
    if mode == "none":
        return [(1.0, x)]
    if mode == "flip":
        return [(0.5, x), (0.5, _mirror(x))]
    t_a, t_b = _translations(x)
    return [(0.25, x), (0.25, _mirror(x)),
            (0.125, t_a), (0.125, _mirror(t_a)),
            (0.125, t_b), (0.125, _mirror(t_b))]


def tta_logits(logits_fn: Callable, x, mode: str = "none"):
    """Logits averaged over the TTA views of ``x``; pure and jit-friendly (``mode`` is static).

    Args:
      logits_fn: ``x (N, H, W, C) -> logits (N, K)``, e.g.
        ``lambda x: model.apply(variables, x, train=False)``.
      x: normalised float inputs ``(N, H, W, C)``.
      mode: ``"none"`` (``logits_fn(x)``), ``"flip"`` (mean over ``x`` and its horizontal
        mirror) or ``"flip_translate"`` (``0.5 flip(x) + 0.25 flip(t_a) + 0.25 flip(t_b)``,
        ``t_a``/``t_b`` the one-pixel diagonal shifts; see the module docstring).

    Returns:
      ``(N, K)`` logits, float32 when ``logits_fn`` gives float32 (or lower precision).

    Raises:
      ValueError: ``mode`` is not in ``TTA_MODES``; images smaller than 2x2 for
        ``"flip_translate"``.
    """
    views = tta_views(x, mode)
    if len(views) == 1:
        return logits_fn(x)
    # Average logits, not probabilities: it is what airbench does (its TTA sums the weighted
    # net outputs before any softmax); softmax of the mean logits is the views' weighted
    # geometric mean of probabilities, renormalised.
    total = None
    for weight, view in views:
        term = weight * jnp.asarray(logits_fn(view), jnp.float32)
        total = term if total is None else total + term
    return total
