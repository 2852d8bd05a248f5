"""Muon for convolution filters: momentum orthogonalised by Newton-Schulz (airbench94_muon).

For a filter ``W`` of shape (kh, kw, C_in, C_out) seen as the (kh*kw*C_in, C_out) matrix of
its C_out output filters, one step is::

    m <- momentum * m + g                            (Nesterov: use g + momentum * m)
    O <- orthogonalise(m)                            (3 Newton-Schulz steps: U V^T of m = U S V^T)
    W <- W * sqrt(C_out) / ||W||_F - lr_t * O        (normalise, then step)

The orthogonalised update has all its singular values near 1: every direction of the filter
bank moves by the same amount, however unequal the gradient's singular values are. The
weights are pinned to the sphere of radius sqrt(C_out) before each step; a BatchNorm follows
every filter in the networks it is meant for, so the filter's scale carries no meaning, and a
fixed norm keeps the effective learning rate fixed too.

The momentum is ``optax.trace`` and the orthogonalisation optax's Muon
(``optax.contrib.scale_by_muon``, with each kernel's output axis as the matrix's columns); the
normalisation is :func:`normalize_filters`.
Use it through a parameter group: ``ParamGroup("conv./kernel", optimizer="muon", ...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from optax import contrib

# airbench94_muon's Newton-Schulz steps: 3 (modded-nanogpt uses 5); optax's default coefficients
# (3.4445, -4.7750, 2.0315) are the same as airbench's.
NS_STEPS = 3


def kernel_dimension_numbers(params):
    """For each leaf of ``params`` (all kernels, ndim >= 2): its last axis (C_out) is the
    matrix's output axis, every other axis is reduced over (kh, kw, C_in)."""
    def dims(leaf):
        if jnp.ndim(leaf) < 2:
            raise ValueError(f"Muon needs kernels with ndim >= 2 (filters, dense weights); got "
                             f"a leaf of shape {jnp.shape(leaf)}: give biases and BatchNorm "
                             "parameters to another parameter group")
        return contrib.MuonDimensionNumbers(reduction_axis=tuple(range(jnp.ndim(leaf) - 1)),
                                            output_axis=jnp.ndim(leaf) - 1)

    return jax.tree.map(dims, params)


def normalize_filters() -> optax.GradientTransformation:
    """Adds ``W * (sqrt(C_out) / ||W||_F - 1)`` to each update: applied, the weight is first
    scaled to Frobenius norm sqrt(C_out) (C_out = its last axis), then moved by the update."""
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("normalize_filters needs the params (optax's update(g, s, params))")

        def add(u, w):
            w32 = w.astype(jnp.float32)
            scale = jnp.sqrt(jnp.float32(w.shape[-1])) / jnp.linalg.norm(w32.ravel())
            return (u + w32 * (scale - 1.0)).astype(u.dtype)

        return jax.tree.map(add, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def muon(learning_rate: float | Callable, *, momentum: float = 0.6, nesterov: bool = True,
         ns_steps: int = NS_STEPS, normalize: bool = True) -> optax.GradientTransformation:
    """airbench94_muon's Muon for the kernels it is given (the module docstring's step).

    Args:
      learning_rate: a number or an optax schedule ``step -> lr``.
      momentum: the momentum of the gradient average (airbench94_muon: 0.6).
      nesterov: Nesterov momentum.
      ns_steps: Newton-Schulz iterations.
      normalize: pin each filter bank to Frobenius norm sqrt(C_out) before each step.
    """
    parts = [
        # airbench's momentum: buf = momentum * buf + g, then g + momentum * buf (Nesterov).
        # (optax's own Muon momentum is an average with bias correction: the same direction
        # once a few steps have passed, not in the first ones.)
        optax.trace(decay=momentum, nesterov=nesterov),
        # orthogonalisation only (beta=0: no second momentum)
        contrib.scale_by_muon(ns_steps=ns_steps, beta=0.0, nesterov=False,
                              weight_dimension_numbers=kernel_dimension_numbers),
        optax.scale_by_learning_rate(learning_rate),
    ]
    if normalize:
        parts.append(normalize_filters())
    return optax.chain(*parts)


__all__ = ["NS_STEPS", "kernel_dimension_numbers", "muon", "normalize_filters"]
