"""Training-mode BatchNorm (+ ReLU, + 2x2 max pool) run by the native kernels of ``batchnorm.cc``.

The functions of :mod:`jaxcnn.ops.batchnorm` (same arguments, same results up to float
rounding: the statistics are summed in float64 here, in float32 there), computed by C++ FFI
calls that make fewer passes over the activation than XLA:CPU's fusions of the pure-JAX
version:

* ``batch_norm_train_native``: forward = one pass for the sums, one writing y; backward = one
  pass for the gradient sums, one writing dx (the ReLU mask recomputed from x).
* ``batch_norm_relu_pool_train_native``: the same with the 2x2 max pool folded in: the
  full-resolution activation and its gradient are never written, only the pooled output and
  an int8 map of where each window's gradient goes.

They run on the CPU backend in float32 when the library is built (``jaxcnn[onednn]``, see
:mod:`jaxcnn.ops.onednn.build`); anything else (another dtype or backend, no compiler,
``JAXCNN_ONEDNN=0``, inside :func:`jaxcnn.ops.onednn.pure_jax`) computes with the pure-JAX
functions. Sums are added in a fixed order, so results are bitwise reproducible.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.ops import batchnorm as pure
from jaxcnn.ops.onednn import build
from jaxcnn.ops.onednn.conv import _PURE_JAX

__all__ = ["batch_norm_relu_pool_train_native", "batch_norm_train_native", "runs_native"]


def runs_native(x) -> bool:
    """True when the native kernels compute a BatchNorm of ``x`` here (float32 on the CPU
    backend, the library available, not inside ``pure_jax()``)."""
    return (not _PURE_JAX.get() and jax.default_backend() == "cpu"
            and jnp.result_type(x) == jnp.float32 and build.available())


def _runs_native(x, scale, bias) -> bool:
    return runs_native(x) and jnp.result_type(scale) == jnp.result_type(bias) == jnp.float32


def _f32(*shapes):
    return [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]


def _call(target, out, *args, **attrs):
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


# ------------------------------------------------------------------ BatchNorm (+ ReLU)

@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn(x, scale, bias, eps, relu):
    return _bn_fwd(x, scale, bias, eps, relu)[0]


def _bn_fwd(x, scale, bias, eps, relu):
    c = x.shape[-1]
    y, mean, var = _call("jaxcnn_batchnorm_forward", _f32(x.shape, (c,), (c,)), x, scale, bias,
                         eps=np.float32(eps), relu=np.int64(relu))
    return (y, mean, var), (x, scale, bias, mean, var)


def _bn_bwd(eps, relu, res, cotangents):
    x, scale, bias, mean, var = res
    c = x.shape[-1]
    dx, dscale, dbias = _call("jaxcnn_batchnorm_backward", _f32(x.shape, (c,), (c,)),
                              cotangents[0], x, scale, bias, mean, var, eps=np.float32(eps),
                              relu=np.int64(relu))
    return dx, dscale, dbias


_bn.defvjp(_bn_fwd, _bn_bwd)


def batch_norm_train_native(x, scale, bias, eps: float = 1e-5, relu: bool = False):
    """:func:`jaxcnn.ops.batchnorm.batch_norm_train` by the native kernels where they run.

    Args:
      x: (N, H, W, C) float array. scale, bias: (C,). eps: added to the variance.
      relu: apply ReLU to the output.

    Returns:
      (y, mean, var): y (N, H, W, C); the (C,) batch mean and biased variance (float32, no
      gradient flows through them).
    """
    if not _runs_native(x, scale, bias):
        return pure.batch_norm_train(x, scale, bias, eps, relu)
    pure.check_args(x, scale, bias)
    y, mean, var = _bn(x, scale, bias, float(eps), bool(relu))
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)


# ------------------------------------------------------------------ BatchNorm + ReLU + 2x2 pool

@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_pool(x, scale, bias, eps):
    y, _, mean, var = _bn_pool_call(x, scale, bias, eps)
    return y, mean, var


def _bn_pool_call(x, scale, bias, eps):
    n, h, w, c = x.shape
    out = [jax.ShapeDtypeStruct((n, h // 2, w // 2, c), jnp.float32),
           jax.ShapeDtypeStruct((n, h // 2, w // 2, c), jnp.int8), *_f32((c,), (c,))]
    return _call("jaxcnn_batchnorm_pool_forward", out, x, scale, bias, eps=np.float32(eps))


def _bn_pool_fwd(x, scale, bias, eps):
    y, route, mean, var = _bn_pool_call(x, scale, bias, eps)
    return (y, mean, var), (x, scale, bias, mean, var, route)


def _bn_pool_bwd(eps, res, cotangents):
    x, scale, bias, mean, var, route = res
    c = x.shape[-1]
    dx, dscale, dbias = _call("jaxcnn_batchnorm_pool_backward", _f32(x.shape, (c,), (c,)),
                              cotangents[0], route, x, scale, bias, mean, var,
                              eps=np.float32(eps))
    return dx, dscale, dbias


_bn_pool.defvjp(_bn_pool_fwd, _bn_pool_bwd)


def batch_norm_relu_pool_train_native(x, scale, bias, eps: float = 1e-5):
    """:func:`jaxcnn.ops.batchnorm.batch_norm_relu_pool_train` by the native kernels where they
    run: ``max_pool_2x2(relu(BatchNorm(x)))`` in training mode, the gradient to each window's
    first maximum.

    Args:
      x: (N, H, W, C) float array with even H and W. scale, bias: (C,). eps: added to the
        variance.

    Returns:
      (y, mean, var): y (N, H/2, W/2, C); float32 (C,) batch mean and biased variance (no
      gradient flows through them).
    """
    if not _runs_native(x, scale, bias):
        return pure.batch_norm_relu_pool_train(x, scale, bias, eps)
    pure.check_args(x, scale, bias, pooled=True)
    y, mean, var = _bn_pool(x, scale, bias, float(eps))
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)
