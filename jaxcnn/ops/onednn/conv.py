"""``conv2d_onednn``: a 2-D convolution whose forward and backward passes run in oneDNN.

The same function as ``lax.conv_general_dilated(x, kernel, stride, padding,
dimension_numbers=("NHWC", "HWIO", "NHWC"))`` and its gradients, computed by oneDNN (the
library Keras/TensorFlow and PyTorch use on CPUs) through three XLA FFI calls built from
``conv.cc``:

* forward: ``y = conv(x, w)``;
* input gradient: ``dx = conv_backward_data(dy, w)``;
* kernel gradient: ``dw = conv_backward_weights(x, dy)``.

A ``jax.custom_vjp`` ties them together, so ``jax.grad`` and ``jit`` see one differentiable
op. It runs on the CPU backend only, in float32, and in bfloat16 where the CPU multiplies
bfloat16 natively (:func:`native_bf16`: AVX512_BF16 or AMX; oneDNN accumulates in float32 and
rounds each result to bfloat16 once). Where JAX's matmul precision is ``"bfloat16"``
(:func:`bf16_products`) float32 operands are rounded to bfloat16 for those kernels and the
results stay float32: the convolution multiplies as fast as bfloat16's (a training step of
airbench94_muon at batch 2,000 took 1.4x less time) and only its operands are rounded; the
backward pass keeps the rounded operands (half the memory of float32 ones). Other dtypes, or a
machine where the kernels are unavailable (see :mod:`jaxcnn.ops.onednn.build`), take
:func:`jaxcnn.ops.fast_conv.conv2d_fast`, which computes the same function in pure JAX.
Under ``vmap`` (model ensembles) the calls run one member after another.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.ops import _checks
from jaxcnn.ops.fast_conv import checked_conv_args, conv2d_fast
from jaxcnn.ops.onednn import build

__all__ = ["bf16_products", "conv2d_onednn", "native_bf16", "pure_jax", "supports"]

# CPU flags (``/proc/cpuinfo``) of native bfloat16 dot products: AVX-512 BF16 (Cooper Lake,
# Zen 4 and later) and AMX (Sapphire Rapids and later).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# True inside ``pure_jax()``: conv2d_onednn traces its pure-JAX twin instead of FFI calls.
_PURE_JAX = contextvars.ContextVar("jaxcnn_onednn_pure_jax", default=False)


@contextlib.contextmanager
def pure_jax():
    """Within this context (while tracing), ``conv2d_onednn`` computes with
    :func:`jaxcnn.ops.fast_conv.conv2d_fast` (the same function in pure JAX). For tools that
    read the traced program, such as XLA's FLOP count (:mod:`jaxcnn.flops`), which cannot
    see inside an FFI call."""
    token = _PURE_JAX.set(True)
    try:
        yield
    finally:
        _PURE_JAX.reset(token)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (a flag of
    :data:`BF16_FLAGS` in ``/proc/cpuinfo``; False where that file is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def bf16_products() -> bool:
    """Whether float32 convolutions should multiply in bfloat16: JAX's matmul precision
    (``jax.default_matmul_precision("bfloat16")``, a context manager, or the
    ``jax_default_matmul_precision`` option) is ``"bfloat16"`` where this is traced. On a CPU
    with native bfloat16 (:func:`native_bf16`), float32 operands are then rounded to bfloat16
    and the results (output and both gradients) stay float32, accumulated in float32: what
    that precision means for XLA's own convolutions on a TPU."""
    return jax.config.jax_default_matmul_precision == "bfloat16"


def supports(x_dtype, kernel_dtype) -> bool:
    """True when oneDNN runs this convolution: float32 operands, or bfloat16 ones on a CPU
    with native bfloat16 (:func:`native_bf16`), and the kernels available."""
    x_dtype, kernel_dtype = jnp.dtype(x_dtype), jnp.dtype(kernel_dtype)
    if x_dtype != kernel_dtype:
        return False
    if x_dtype == jnp.bfloat16:
        return native_bf16() and build.available()
    return x_dtype == jnp.float32 and build.available()


def _attrs(stride, pads) -> dict:
    (sh, sw), ((pt, pb), (pl, pr)) = stride, pads
    return {k: np.int64(v) for k, v in
            dict(sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr).items()}


def _call(target: str, out_shape, *args, stride, pads, dtype):
    """One FFI call; ``out_shape`` is a shape, or a list of shapes for several results (the
    first has ``dtype``, the others, a bias gradient, float32)."""
    if isinstance(out_shape, list):
        out = [jax.ShapeDtypeStruct(s, dtype if i == 0 else jnp.float32)
               for i, s in enumerate(out_shape)]
    else:
        out = jax.ShapeDtypeStruct(out_shape, dtype)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **_attrs(stride, pads))


def _out_shape(x_shape, k_shape, stride, pads):
    (n, h, w, _), (kh, kw, _, o) = x_shape, k_shape
    (sh, sw), ((pt, pb), (pl, pr)) = stride, pads
    return (n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, o)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv(x, kernel, bias, stride, pads, operands):
    """conv(x, kernel) (+ bias) in oneDNN: x and kernel multiplied as ``operands`` (their own
    dtype, or bfloat16 for float32 ones: bfloat16 products), the output and both gradients in
    x's dtype. A bias (float32 operands only; None: none) is fused into the forward pass and
    its gradient into the kernel gradient's: no extra pass over the output."""
    return _conv_fwd(x, kernel, bias, stride, pads, operands)[0]


def _conv_fwd(x, kernel, bias, stride, pads, operands):
    xo, ko = x.astype(operands), kernel.astype(operands)
    shape = _out_shape(x.shape, kernel.shape, stride, pads)
    if bias is None:
        y = _call("jaxcnn_onednn_conv_forward", shape, xo, ko, stride=stride, pads=pads,
                  dtype=x.dtype)
    else:
        y = _call("jaxcnn_onednn_conv_forward_bias", shape, xo, ko, bias, stride=stride,
                  pads=pads, dtype=x.dtype)
    return y, (xo, ko, bias)  # rounded operands: half the memory of float32 ones


def _conv_bwd(stride, pads, operands, res, g):
    xo, ko, bias = res
    go = g.astype(operands)  # g has the output's dtype, which the gradients take
    dx = _call("jaxcnn_onednn_conv_backward_data", xo.shape, go, ko, stride=stride, pads=pads,
               dtype=g.dtype)
    if bias is None:
        dk = _call("jaxcnn_onednn_conv_backward_weights", ko.shape, xo, go, stride=stride,
                   pads=pads, dtype=g.dtype)
        return dx, dk, None
    dk, db = _call("jaxcnn_onednn_conv_backward_weights_bias", [ko.shape, ko.shape[-1:]], xo,
                   go, stride=stride, pads=pads, dtype=g.dtype)
    return dx, dk, db


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d_onednn(x, kernel, stride=1, padding="SAME", dilation=1, groups=1, bias=None,
                  precision=None):
    """2-D cross-correlation run by oneDNN (float32, or bfloat16 where :func:`native_bf16`, on
    CPU), else by ``conv2d_fast``.

    Args:
      x: (N, H, W, C) float array.
      kernel: (kh, kw, C, O) float array.
      stride: int or (sh, sw), >= 1.
      padding: "SAME" | "VALID" | int | (ph, pw) | ((top, bottom), (left, right)).
      dilation, groups: only 1 is supported.
      bias: optional (O,) added to every output position (fused into oneDNN's forward pass,
        its gradient into the kernel gradient's: no extra pass over the output).
      precision: for float32 operands, ``"bfloat16"`` (products of bfloat16-rounded
        operands, float32 results, where the CPU has native bfloat16) or ``"float32"``; None
        (default): ``"bfloat16"`` where :func:`bf16_products`, else ``"float32"``.

    Returns:
      (N, Ho, Wo, O), the values (and gradients) of ``lax.conv_general_dilated`` with NHWC/HWIO
      dimension numbers (plus ``bias``).

    Raises:
      ValueError: as :func:`jaxcnn.ops.fast_conv.conv2d_fast`.
    """
    x, kernel, stride, pads = checked_conv_args(x, kernel, stride, padding, dilation, groups,
                                                "conv2d_onednn")
    _checks.check_precision(precision, "precision")
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != kernel.shape[-1:]:
            raise ValueError(f"bias must have shape ({kernel.shape[-1]},); got {bias.shape}")
    if _PURE_JAX.get() or jax.default_backend() != "cpu" or not supports(x.dtype, kernel.dtype):
        y = conv2d_fast(x, kernel, stride, pads)
        return y if bias is None else y + bias.astype(y.dtype)
    x, stride, pads = _exact_padding(x, kernel.shape[:2], stride, pads)
    products_bf16 = precision == "bfloat16" or (precision is None and bf16_products())
    operands = x.dtype
    if x.dtype == jnp.float32 and products_bf16 and supports(jnp.bfloat16, jnp.bfloat16):
        operands = jnp.dtype(jnp.bfloat16)
    fused = bias is not None and operands == jnp.float32 and bias.dtype == jnp.float32
    y = _conv(x, kernel, bias if fused else None, stride, pads, operands)
    return y if bias is None or fused else y + bias.astype(y.dtype)


def _exact_padding(x, window, stride, pads):
    """The same convolution with exact padding: (x cropped, stride, pads).

    With a stride > 1 the last ``(H + top + bottom - kh) % sh`` rows of the padded input are
    never read: drop that much high-side padding, then input rows (the gradient of the crop
    puts zeros back). An axis with one output position gets stride 1 (no other window exists).
    Both avoid degenerate problems that oneDNN 3.13's brgconv got wrong (W=3, pads (1, 0),
    kw=3, sw=2 gave a wrong output row).
    """
    size = list(x.shape[1:3])
    new_pads, new_stride = [], []
    for axis, ((lo, hi), k, s) in enumerate(zip(pads, window, stride, strict=True)):
        surplus = (size[axis] + lo + hi - k) % s
        trim_pad = min(hi, surplus)
        size[axis] -= surplus - trim_pad
        new_pads.append((lo, hi - trim_pad))
        single_output = size[axis] + lo + hi - trim_pad == k
        new_stride.append(1 if single_output else s)
    return x[:, : size[0], : size[1], :], tuple(new_stride), tuple(new_pads)
