"""Floating-point operations of a model's forward pass, counted by XLA.

``forward_flops(model, variables, (1, 32, 32, 3))`` compiles one inference forward pass and
reads XLA's own cost analysis, so the count covers every operation the model really runs
(convolutions, dense layers, BatchNorm, activations, pooling) without a hand-written table per
layer type. Convention: a multiply-add counts as 2 FLOPs (a Dense layer of ``n_in -> n_out``
is ``2 * n_in * n_out`` plus ``n_out`` for the bias), the convention of most papers since
ResNet's "FLOPs" column counted multiply-adds, so divide by 2 to compare with those (ResNet-50's
"3.8 x 10^9 FLOPs" are multiply-adds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["cost_flops", "forward_flops", "function_flops", "train_step_flops", "tta_flops"]


def cost_flops(analysis: Any) -> float:
    """The ``"flops"`` entry of an XLA cost analysis (a dict, or a list of dicts per program).

    Raises:
      ValueError: when the analysis has no FLOP count (some backends return none).
    """
    if isinstance(analysis, Sequence) and not isinstance(analysis, dict):
        parts = [cost_flops(a) for a in analysis if a]
        if not parts:
            raise ValueError("XLA cost analysis is empty: this backend reports no FLOP count")
        return float(sum(parts))
    if not analysis or "flops" not in analysis:
        raise ValueError(f"XLA cost analysis has no 'flops' entry; got keys {list(analysis or {})}")
    return float(analysis["flops"])


def function_flops(fn: Callable, *args, compile: bool = True) -> float:
    """FLOPs of ``fn(*args)`` as XLA counts them: the compiled program's cost analysis, falling
    back to the lowered (unoptimised) program's when the compiled one reports none.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s (nothing is executed).
    ``compile=False`` reads the lowered program's analysis only (no compilation: cheap for a
    large training step; the count is the program as written, before XLA's fusions).
    """
    from jaxcnn.ops.onednn import pure_jax

    # A jitted fn is traced again from its Python body, in a fresh closure: jit's trace cache
    # does not see pure_jax(), and would hand back a program traced with the FFI calls.
    body = getattr(fn, "__wrapped__", fn)
    with pure_jax():  # XLA counts no FLOPs inside the oneDNN FFI calls: trace the JAX twin
        lowered = jax.jit(lambda *a: body(*a)).lower(*args)
    if not compile:
        return cost_flops(lowered.cost_analysis())
    try:
        return cost_flops(lowered.compile().cost_analysis())
    except (ValueError, NotImplementedError, TypeError):
        return cost_flops(lowered.cost_analysis())


def forward_flops(
    model, variables, input_shape: Sequence[int] = (1, 32, 32, 3), dtype=jnp.float32
) -> float:
    """FLOPs of one inference forward pass (``train=False``) of a Flax model.

    Args:
      model: a ``jaxcnn.models`` module.
      variables: its ``{"params": ..., "batch_stats": ...}`` (arrays or ShapeDtypeStructs).
      input_shape: (N, H, W, C); N=1 gives FLOPs per image.
      dtype: input dtype.

    Returns:
      The FLOP count for the whole batch (divide by N for per image).
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (N, H, W, C) with positive sizes, got {input_shape}")

    def forward(v, x):
        return model.apply(v, x, train=False)

    x = jax.ShapeDtypeStruct(shape, dtype)
    v = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), variables)
    return function_flops(forward, v, x)


def _structs(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def train_step_flops(train_step: Callable, state, batch_size: int,
                     image_shape: Sequence[int]) -> float:
    """FLOPs of one training step ``train_step(state, images, labels)`` (the engine's: forward,
    backward and the optimizer update, Muon's Newton-Schulz iterations included) on a batch of
    ``batch_size`` uint8 images of ``image_shape`` (H, W, C), from the lowered program (nothing
    is compiled or run). Times the run's steps, the training FLOPs of a run."""
    images = jax.ShapeDtypeStruct((int(batch_size), *map(int, image_shape)), jnp.uint8)
    labels = jax.ShapeDtypeStruct((int(batch_size),), jnp.int32)
    return function_flops(train_step, _structs(state), images, labels, compile=False)


def tta_flops(model, variables, image_shape: Sequence[int], mode: str) -> float:
    """FLOPs of evaluating one image of ``image_shape`` (H, W, C) with test-time augmentation
    ``mode`` (:mod:`jaxcnn.evaluate.tta`: 1, 2 or 6 forward passes, and their averaging)."""
    from jaxcnn.evaluate.tta import tta_logits

    def evaluate(v, x):
        return tta_logits(lambda y: model.apply(v, y, train=False), x, mode)

    x = jax.ShapeDtypeStruct((1, *map(int, image_shape)), jnp.float32)
    return function_flops(evaluate, _structs(variables), x)
