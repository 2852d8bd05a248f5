"""Training-mode BatchNorm (+ optional ReLU or GELU) with a hand-written backward pass.

For x of shape (N, H, W, C), per channel c over the M = N*H*W positions::

    mean = sum(x) / M,   var = sum(x^2) / M - mean^2          (biased, as Flax and Keras)
    y    = act(scale * (x - mean) / sqrt(var + eps) + bias)    (act: ReLU, GELU or identity)

The function is Flax's ``nn.BatchNorm`` (``use_fast_variance=True``) followed by ``nn.relu``
or the exact ``nn.gelu``; only the gradient is computed differently. With ``a = scale * inv``,
``inv = 1/sqrt(var+eps)``, ``z = a * (x - mean) + bias`` and ``gm = g * act'(z)`` (the incoming
gradient masked where the ReLU was off; for GELU ``act'(z) = Phi(z) + z * phi(z)``, the normal
CDF and density)::

    dbias  = sum(gm)
    dscale = inv * (sum(gm * x) - mean * sum(gm))
    dx     = a * (gm - dbias / M - (x - mean) * inv * dscale / M)

Why: on XLA:CPU these layers are memory-bound, and autodiff of the textbook formula reads and
writes the full activation more often than needed (it materialises ``x - mean``, keeps the ReLU
output for its mask, ...). Here the forward pass reads x twice (statistics, then output) and
writes y once; the backward pass reads g and x twice and writes dx once, recomputing the ReLU
mask or the GELU slope from x instead of storing them: the layer keeps only its input for the
backward pass (autodiff of BatchNorm -> GELU keeps three more activations of x's size).
Statistics and sums are float32 whatever x's dtype.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.ops.pool import WINDOW_2X2, from_window_views, window_views

__all__ = ["batch_norm_relu_pool_train", "batch_norm_train"]

_AXES = (0, 1, 2)


def _stats(x):
    """Per-channel (mean, biased var) of (N, H, W, C) x, in float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=_AXES)
    var = jnp.maximum(jnp.mean(xf * xf, axis=_AXES) - mean * mean, 0.0)
    return mean, var


def check_args(x, scale, bias, pooled: bool = False) -> None:
    """Raise ValueError naming the problem unless x is (N, H, W, C) (with even H and W when
    ``pooled``) and scale, bias are (C,). Shared with :mod:`jaxcnn.ops.onednn.batchnorm`."""
    what = "batch_norm_relu_pool_train" if pooled else "batch_norm_train"
    shape = jnp.shape(x)
    if len(shape) != 4 or (pooled and (shape[1] % 2 or shape[2] % 2)):
        even = " with even H and W" if pooled else ""
        raise ValueError(f"{what} expects x of shape (N, H, W, C){even}; got {shape}")
    c = shape[-1]
    if jnp.shape(scale) != (c,) or jnp.shape(bias) != (c,):
        raise ValueError(
            f"scale and bias must have shape ({c},); got {jnp.shape(scale)} and {jnp.shape(bias)}"
        )


def _affine(x, a, b):
    return x.astype(jnp.float32) * a + b


_SQRT_HALF = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2 pi)


def activate(z, act: str):
    """``act`` ("relu", "gelu": the exact GELU, or "none") of z; shared with
    ``layers.FusedBatchNorm``'s evaluation path."""
    if act == "relu":
        return jnp.maximum(z, 0.0)
    if act == "gelu":
        return jax.nn.gelu(z, approximate=False)
    return z


def _gelu_slope(z):
    """d/dz of the exact GELU z * Phi(z): Phi(z) + z * phi(z)."""
    return 0.5 * lax.erfc(-z * _SQRT_HALF) + z * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn(x, scale, bias, eps, act):
    """(y, mean, var). The backward pass ignores the cotangents of mean and var: the public
    function stops their gradient, so those cotangents are always zero."""
    y, mean, var, _ = _bn_fwd_values(x, scale, bias, eps, act)
    return y, mean, var


def _bn_fwd_values(x, scale, bias, eps, act):
    mean, var = _stats(x)
    inv = lax.rsqrt(var + eps)
    a = scale.astype(jnp.float32) * inv
    b = bias.astype(jnp.float32) - mean * a
    y = activate(_affine(x, a, b), act).astype(x.dtype)
    return y, mean, var, inv


def _bn_fwd(x, scale, bias, eps, act):
    y, mean, var, inv = _bn_fwd_values(x, scale, bias, eps, act)
    return (y, mean, var), (x, scale, bias, mean, inv)


def _bn_bwd(eps, act, res, cotangents):
    g = cotangents[0]
    # The barrier keeps XLA from merging the recomputation below with the forward pass's
    # identical expressions (which would keep the GELU's erfc and exp alive until here).
    x, scale, bias, mean, inv = lax.optimization_barrier(res) if act == "gelu" else res
    a = scale.astype(jnp.float32) * inv
    gf = g.astype(jnp.float32)
    if act != "none":  # the ReLU mask or the GELU slope, recomputed from x rather than stored
        z = _affine(x, a, bias.astype(jnp.float32) - mean * a)
        gf = jnp.where(z > 0, gf, 0.0) if act == "relu" else gf * _gelu_slope(z)
    m = x.size // x.shape[-1]
    s1 = jnp.sum(gf, axis=_AXES)
    s2 = jnp.sum(gf * x.astype(jnp.float32), axis=_AXES)
    dbias = s1
    dscale = inv * (s2 - mean * s1)
    # dx = a*gf + c0 + c1*x: the (x - mean) term expanded so that one pass writes dx.
    c1 = -a * inv * dscale / m
    c0 = -a * dbias / m - c1 * mean
    dx = (a * gf + c0 + c1 * x.astype(jnp.float32)).astype(x.dtype)
    return dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_bn.defvjp(_bn_fwd, _bn_bwd)


def batch_norm_train(x, scale, bias, eps: float = 1e-5, relu: bool = False,
                     gelu: bool = False):
    """BatchNorm with batch statistics (training mode), optionally followed by ReLU or GELU.

    Args:
      x: (N, H, W, C) float array (any float dtype; statistics are float32).
      scale, bias: (C,) learned parameters.
      eps: added to the variance.
      relu: apply ReLU to the output (fused: one pass, and the mask is not stored).
      gelu: apply the exact (erf) GELU to the output, computed in float32 (fused: its slope
        is recomputed in the backward pass, not stored).

    Returns:
      (y, mean, var): y (N, H, W, C) in x's dtype; the float32 (C,) batch mean and biased
      variance, for the running averages (no gradient flows through them).
    """
    check_args(x, scale, bias)
    if relu and gelu:
        raise ValueError("batch_norm_train: pass relu=True or gelu=True, not both")
    act = "relu" if relu else "gelu" if gelu else "none"
    y, mean, var = _bn(x, scale, bias, float(eps), act)
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)


# ------------------------------------------------------------------ BatchNorm + ReLU + 2x2 pool


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_relu_pool(x, scale, bias, eps):
    y, mean, var, _, _ = _bn_relu_pool_values(x, scale, bias, eps)
    return y, mean, var


def _bn_relu_pool_values(x, scale, bias, eps):
    """(y, mean, var, inv, route): ``route`` (N, H/2, W/2, C) int8 is the window position
    (0-3, row-major) of each window's first maximum, or 4 where the ReLU is off (y == 0)."""
    mean, var = _stats(x)
    inv = lax.rsqrt(var + eps)
    a = scale.astype(jnp.float32) * inv
    b = bias.astype(jnp.float32) - mean * a
    z = jnp.stack([_affine(v, a, b) for v in window_views(x)], axis=-1)  # (.., C, 4)
    # The routing is decided here, from the very values pooled: recomputing z in the backward
    # pass and testing equality is not safe (XLA may contract x*a+b into an FMA in one place
    # and not the other, e.g. once the batch is sharded over devices).
    zmax = jnp.max(z, axis=-1)
    y = jnp.maximum(zmax, 0.0).astype(x.dtype)  # relu(max(z)) == max(relu(z))
    route = jnp.where(zmax > 0, jnp.argmax(z, axis=-1), 4).astype(jnp.int8)
    return y, mean, var, inv, route


def _bn_relu_pool_fwd(x, scale, bias, eps):
    y, mean, var, inv, route = _bn_relu_pool_values(x, scale, bias, eps)
    return (y, mean, var), (x, scale, mean, inv, route)


def _bn_relu_pool_bwd(eps, res, cotangents):
    g = cotangents[0].astype(jnp.float32)
    x, scale, mean, inv, route = res
    a = scale.astype(jnp.float32) * inv
    xs = [v.astype(jnp.float32) for v in window_views(x)]
    gms = [jnp.where(route == k, g, 0.0) for k in range(len(WINDOW_2X2))]
    s1 = sum(jnp.sum(gm, axis=_AXES) for gm in gms)
    s2 = sum(jnp.sum(gm * xv, axis=_AXES) for gm, xv in zip(gms, xs, strict=True))
    m = x.size // x.shape[-1]
    dscale = inv * (s2 - mean * s1)
    c1 = -a * inv * dscale / m
    c0 = -a * s1 / m - c1 * mean
    dx = from_window_views([a * gm + c0 + c1 * xv for gm, xv in zip(gms, xs, strict=True)])
    return dx.astype(x.dtype), dscale.astype(scale.dtype), s1.astype(scale.dtype)


_bn_relu_pool.defvjp(_bn_relu_pool_fwd, _bn_relu_pool_bwd)


def batch_norm_relu_pool_train(x, scale, bias, eps: float = 1e-5):
    """``max_pool_2x2(relu(BatchNorm(x)))`` in training mode, as one op.

    The values of :func:`batch_norm_train` with ``relu=True`` followed by
    :func:`jaxcnn.ops.pool.max_pool_2x2` (gradient to each window's first maximum), without
    writing the full-resolution BatchNorm output or its gradient: the forward pass reads x twice
    and writes the pooled output and an int8 map of where each window's gradient goes; the
    backward pass reads x, that map and the pooled gradient twice and writes dx.

    Args:
      x: (N, H, W, C) float array with even H and W.
      scale, bias: (C,) learned parameters. eps: added to the variance.

    Returns:
      (y, mean, var): y (N, H/2, W/2, C) in x's dtype; float32 (C,) batch mean and biased
      variance (no gradient flows through them).
    """
    check_args(x, scale, bias, pooled=True)
    y, mean, var = _bn_relu_pool(x, scale, bias, float(eps))
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)
