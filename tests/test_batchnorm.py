"""jaxcnn.ops.batchnorm / layers.FusedBatchNorm against flax.linen.BatchNorm (+ relu or gelu).

Both implementations are checked: the pure-JAX functions of ``jaxcnn.ops.batchnorm`` and the
C++ kernels of ``jaxcnn.ops.onednn.batchnorm`` (``native``; skipped where the library is
unavailable). Reference: ``nn.BatchNorm(use_fast_variance=True)`` and autodiff, float32; and a
float64 numpy evaluation of the forward formula. Tolerance: 1e-5 x max|reference| (docs/design.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn.models.layers import FusedBatchNorm, batch_norm
from jaxcnn.ops import backend
from jaxcnn.ops import batchnorm as pure
from jaxcnn.ops.onednn import batchnorm as native
from jaxcnn.ops.onednn import build

RTOL = 1e-5

needs_native = pytest.mark.skipif(
    not build.available(), reason=f"native kernels unavailable: {build.unavailable_reason()}")
# (name, batch_norm_train, batch_norm_relu_pool_train, FusedBatchNorm's ``native``)
IMPLS = [
    pytest.param(("pure", pure.batch_norm_train, pure.batch_norm_relu_pool_train, False),
                 id="pure"),
    pytest.param(("native", native.batch_norm_train_native,
                  native.batch_norm_relu_pool_train_native, True), id="native",
                 marks=needs_native),
]


def _close(got, want, what, rtol=RTOL, scale=0.0):
    """|got - want| <= rtol x max(max|want|, scale)."""
    want = np.asarray(want, np.float64)
    err = np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), scale, 1e-30)
    assert err <= rtol, f"{what}: {err:.2e} x max|ref|"


def _dscale_terms(x, g):
    """The largest per-channel sum of |g * x_hat|: the scale's gradient sum(g * x_hat) can cancel
    to far below its terms, and float32 rounding is relative to the terms, not the result."""
    xd, gd = np.asarray(x, np.float64), np.asarray(g, np.float64)
    x_hat = (xd - xd.mean((0, 1, 2))) / np.sqrt(xd.var((0, 1, 2)) + 1e-5)
    return float(np.abs(gd * x_hat).sum((0, 1, 2)).max())


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, c) + rng.uniform(-2, 2, c)
    return (jnp.asarray(x, jnp.float32), jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
            jnp.asarray(rng.uniform(-1, 1, c), jnp.float32),
            jnp.asarray(rng.standard_normal(shape), jnp.float32))


def _flax_bn_relu(x, scale, bias, relu, eps=1e-5):
    bn = nn.BatchNorm(use_running_average=False, epsilon=eps, use_fast_variance=True)
    stats = {"mean": jnp.zeros(x.shape[-1]), "var": jnp.ones(x.shape[-1])}
    y, upd = bn.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                      mutable=["batch_stats"])
    return nn.relu(y) if relu else y


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 7),
       relu=st.booleans(), seed=st.integers(0, 1000))
def test_values_and_gradients_match_flax(impl, n, h, w, c, relu, seed):
    if n * h * w < 8:  # E[x^2] - E[x]^2 over 2-7 values cancels: rounding noise, not a signal
        return
    batch_norm_train = impl[1]
    x, scale, bias, g = _data((n, h, w, c), seed)
    ours = lambda x, s, b: batch_norm_train(x, s, b, 1e-5, relu)[0]  # noqa: E731
    ref = lambda x, s, b: _flax_bn_relu(x, s, b, relu)  # noqa: E731
    y, vjp = jax.vjp(ours, x, scale, bias)
    y_ref, vjp_ref = jax.vjp(ref, x, scale, bias)
    _close(y, y_ref, "output")
    scales = (0.0, _dscale_terms(x, g), 0.0)
    for got, want, what, scale in zip(vjp(g), vjp_ref(g), ("dx", "dscale", "dbias"), scales,
                                      strict=True):
        _close(got, want, what, rtol=1e-4, scale=scale)  # sums of up to 144 terms, float32


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_against_float64_numpy(impl):
    x, scale, bias, _ = _data((8, 5, 5, 3), 0)
    y, mean, var = impl[1](x, scale, bias, 1e-3, relu=True)
    xd = np.asarray(x, np.float64)
    m, v = xd.mean((0, 1, 2)), xd.var((0, 1, 2))
    want = np.maximum((xd - m) / np.sqrt(v + 1e-3) * np.asarray(scale) + np.asarray(bias), 0)
    _close(y, want, "output")
    _close(mean, m, "mean")
    _close(var, v, "var")


@pytest.mark.parametrize("impl", IMPLS)
def test_statistics_carry_no_gradient(impl):
    x, scale, bias, _ = _data((4, 4, 4, 2), 1)
    for fn in (impl[1], impl[2]):
        g = jax.grad(lambda x, fn=fn: fn(x, scale, bias)[1].sum() + fn(x, scale, bias)[2].sum())(x)
        assert not np.any(np.asarray(g))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_shapes_are_named(impl):
    batch_norm_train = impl[1]
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        batch_norm_train(jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        batch_norm_train(jnp.ones((2, 2, 2, 3)), jnp.ones(2), jnp.zeros(3))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_module_equals_flax_batchnorm_and_relu(train, impl):
    """Same variables, outputs and running statistics as nn.BatchNorm followed by nn.relu."""
    x, scale, bias, _ = _data((6, 4, 4, 3), 2)
    ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    ours = FusedBatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          native=impl[3])
    v_ref, v_ours = ref.init(jax.random.key(0), x), ours.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ref) == jax.tree.map(
        lambda a: (a.shape, a.dtype), v_ours)
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": {"mean": jnp.full(3, 0.3), "var": jnp.full(3, 1.7)}}
    y_ref, s_ref = ref.apply(variables, x, mutable=["batch_stats"])
    y, s = ours.apply(variables, x, mutable=["batch_stats"])
    _close(y, nn.relu(y_ref), "output")
    for k in ("mean", "var"):
        _close(s["batch_stats"][k], s_ref["batch_stats"][k], k)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_module_without_scale_equals_flax_batchnorm_without_scale(train, impl):
    """use_scale=False, relu=False: the variables (no scale), outputs, running statistics and
    bias gradient of nn.BatchNorm(use_scale=False)."""
    x, _, bias, _ = _data((6, 4, 4, 3), 5)
    ref = nn.BatchNorm(use_running_average=not train, use_scale=False, momentum=0.4)
    ours = FusedBatchNorm(use_running_average=not train, use_scale=False, relu=False,
                          momentum=0.4, native=impl[3])
    v_ref, v_ours = ref.init(jax.random.key(0), x), ours.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ref) == jax.tree.map(
        lambda a: (a.shape, a.dtype), v_ours)
    stats = {"mean": jnp.full(3, 0.3), "var": jnp.full(3, 1.7)}

    def run(module, b):
        return module.apply({"params": {"bias": b}, "batch_stats": stats}, x,
                            mutable=["batch_stats"])

    (y_ref, s_ref), (y, s) = run(ref, bias), run(ours, bias)
    _close(y, y_ref, "output")
    for k in ("mean", "var"):
        _close(s["batch_stats"][k], s_ref["batch_stats"][k], k)
    grad = [jax.grad(lambda b, m=m: jnp.sum(jnp.sin(run(m, b)[0])))(bias) for m in (ref, ours)]
    _close(grad[1], grad[0], "dbias")
    with pytest.raises(ValueError, match="zero_scale=True needs use_scale=True"):
        FusedBatchNorm(use_scale=False, zero_scale=True).init(jax.random.key(0), x)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_input_keeps_dtype_and_float32_statistics(impl):
    """(The native kernels are float32: a bfloat16 input takes the pure-JAX path.)"""
    x, scale, bias, _ = _data((4, 4, 4, 3), 3)
    y, mean, var = impl[1](x.astype(jnp.bfloat16), scale, bias, relu=True)
    assert y.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32
    _close(y.astype(jnp.float32), _flax_bn_relu(x, scale, bias, True), "bf16 output", rtol=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 3), h2=st.integers(1, 4), w2=st.integers(1, 4), c=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_bn_relu_pool_matches_flax_bn_relu_max_pool(impl, n, h2, w2, c, seed):
    """Values and gradients of max_pool(relu(BatchNorm(x))), ties after the ReLU included."""
    batch_norm_relu_pool_train = impl[2]
    x, scale, bias, _ = _data((n, 2 * h2, 2 * w2, c), seed)
    ours = lambda x, s, b: batch_norm_relu_pool_train(x, s, b)[0]  # noqa: E731

    def ref(x, s, b):
        return nn.max_pool(_flax_bn_relu(x, s, b, relu=True), (2, 2), strides=(2, 2))

    y, vjp = jax.vjp(ours, x, scale, bias)
    y_ref, vjp_ref = jax.vjp(ref, x, scale, bias)
    g = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape), jnp.float32)
    _close(y, y_ref, "output")
    for got, want, what in zip(vjp(g), vjp_ref(g), ("dx", "dscale", "dbias"), strict=True):
        if np.abs(np.asarray(want)).max() > 0:
            _close(got, want, what, rtol=1e-4)
        else:
            assert not np.any(np.asarray(got)), what


@pytest.mark.parametrize("impl", IMPLS)
def test_bn_relu_pool_needs_even_sizes(impl):
    with pytest.raises(ValueError, match="even H and W"):
        impl[2](jnp.ones((1, 3, 4, 2)), jnp.ones(2), jnp.zeros(2))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_module_with_pool_equals_flax(train, impl):
    x, scale, bias, _ = _data((4, 6, 4, 3), 4)
    variables = {"params": {"scale": scale, "bias": bias},
                 "batch_stats": {"mean": jnp.full(3, 0.2), "var": jnp.full(3, 1.3)}}
    ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    ours = FusedBatchNorm(use_running_average=not train, pool=True, native=impl[3])
    y_ref, s_ref = ref.apply(variables, x, mutable=["batch_stats"])
    y, s = ours.apply(variables, x, mutable=["batch_stats"])
    assert y.shape == (4, 3, 2, 3)
    _close(y, nn.max_pool(nn.relu(y_ref), (2, 2), strides=(2, 2)), "output")
    for k in ("mean", "var"):
        _close(s["batch_stats"][k], s_ref["batch_stats"][k], k)
    with pytest.raises(ValueError, match="pool=True needs relu=True"):
        FusedBatchNorm(relu=False, pool=True).init(jax.random.key(0), x)


# ------------------------------------------------------------------ the native kernels only

def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@needs_native
@pytest.mark.parametrize("pool", [False, True])
def test_native_kernels_over_many_chunks_match_flax_and_repeat_bitwise(pool):
    """16,384 positions: 8 chunks of rows summed on two threads. Values and gradients match
    Flax's, and a second run gives the same bits (the partial sums are added in chunk order
    whoever computed them)."""
    x, scale, bias, _ = _data((16, 32, 32, 8), 7)
    ours = native.batch_norm_relu_pool_train_native if pool else (
        lambda x, s, b: native.batch_norm_train_native(x, s, b, 1e-5, relu=True))

    def ref(x, s, b):
        y = _flax_bn_relu(x, s, b, relu=True)
        return nn.max_pool(y, (2, 2), strides=(2, 2)) if pool else y

    @jax.jit
    def run(x, s, b, g):  # y and its vjp (mean and var carry no gradient)
        y, vjp = jax.vjp(lambda *args: ours(*args)[0], x, s, b)
        return (y, *vjp(g))

    g = jnp.asarray(np.random.default_rng(8).standard_normal(
        jax.eval_shape(ref, x, scale, bias).shape), jnp.float32)
    first, second = run(x, scale, bias, g), run(x, scale, bias, g)
    y_ref, vjp_ref = jax.vjp(ref, x, scale, bias)
    for got, want, what in zip(first, (y_ref, *vjp_ref(g)), ("y", "dx", "dscale", "dbias"),
                               strict=True):
        _close(got, want, what, rtol=1e-4 if what != "y" else RTOL)
    for a, b, what in zip(first, second, ("y", "dx", "dscale", "dbias"), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), f"{what} differs between runs"


@needs_native
def test_native_kernels_are_ffi_calls_only_where_they_run():
    """float32 on the CPU: FFI calls; bfloat16, or inside pure_jax(): the pure-JAX functions."""
    from jaxcnn.ops.onednn import pure_jax

    x, scale, bias, _ = _data((2, 4, 4, 3), 9)
    fn = lambda x: native.batch_norm_train_native(x, scale, bias, relu=True)[0]  # noqa: E731
    pooled = lambda x: native.batch_norm_relu_pool_train_native(x, scale, bias)[0]  # noqa: E731
    assert "jaxcnn_batchnorm_forward" in _lowered(fn, x)
    assert "jaxcnn_batchnorm_pool_forward" in _lowered(pooled, x)
    assert "jaxcnn_batchnorm" not in _lowered(fn, x.astype(jnp.bfloat16))
    with pure_jax():  # a new function: jit would reuse the trace of ``fn``
        assert "jaxcnn_batchnorm" not in _lowered(
            lambda x: native.batch_norm_train_native(x, scale, bias, relu=True)[0], x)


@needs_native
def test_native_kernels_under_vmap_match_each_member():
    """An ensemble axis (vmap): each member normalised over its own batch."""
    members = [_data((3, 4, 4, 2), s) for s in (10, 11)]
    xs, scales, biases = (jnp.stack([m[i] for m in members]) for i in range(3))
    y = jax.vmap(lambda x, s, b: native.batch_norm_relu_pool_train_native(x, s, b)[0])(
        xs, scales, biases)
    for k, (x, s, b, _) in enumerate(members):
        _close(y[k], nn.max_pool(_flax_bn_relu(x, s, b, True), (2, 2), strides=(2, 2)),
               f"member {k}")


# ------------------------------------------------------------------------ BatchNorm + GELU
def _flax_bn_gelu(x, scale, bias, eps=1e-5):
    return nn.gelu(_flax_bn_relu(x, scale, bias, relu=False, eps=eps), approximate=False)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 7),
       seed=st.integers(0, 1000))
def test_gelu_values_and_gradients_match_flax(n, h, w, c, seed):
    """batch_norm_train(gelu=True) is BatchNorm then the exact GELU: values and all three
    gradients against autodiff of nn.BatchNorm -> nn.gelu(approximate=False)."""
    if n * h * w < 8:  # as above: the variance of 2-7 values is rounding noise
        return
    x, scale, bias, g = _data((n, h, w, c), seed)
    y, vjp = jax.vjp(lambda x, s, b: pure.batch_norm_train(x, s, b, 1e-5, gelu=True)[0],
                     x, scale, bias)
    y_ref, vjp_ref = jax.vjp(_flax_bn_gelu, x, scale, bias)
    _close(y, y_ref, "output")
    scales = (0.0, _dscale_terms(x, g), 0.0)  # the GELU's slope is at most 1.13
    for got, want, what, scale in zip(vjp(g), vjp_ref(g), ("dx", "dscale", "dbias"), scales,
                                      strict=True):
        _close(got, want, what, rtol=1e-4, scale=scale)


def test_gelu_slope_against_float64_numpy():
    """The GELU slope of the backward pass, Phi(z) + z phi(z), against scipy-free float64."""
    from math import erf, exp, pi, sqrt

    z = np.linspace(-6, 6, 241)
    want = [0.5 * (1 + erf(t / sqrt(2))) + t * exp(-t * t / 2) / sqrt(2 * pi) for t in z]
    got = pure._gelu_slope(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=2e-6)


def test_gelu_backward_keeps_only_the_input():
    """Autodiff of BatchNorm -> GELU keeps three more activations of x's size for its backward
    pass; the fused op keeps x alone (and per-channel vectors)."""
    x, scale, bias, _ = _data((2, 8, 6, 3), 7)

    def kept(fn):
        _, vjp = jax.vjp(fn, x, bias)
        return sum(leaf.size == x.size for leaf in jax.tree.leaves(vjp))

    assert kept(lambda x, b: pure.batch_norm_train(x, scale, b, gelu=True)[0]) == 1
    assert kept(lambda x, b: _flax_bn_gelu(x, scale, b)) > 1  # the check can tell them apart


def test_gelu_and_relu_together_are_refused():
    x, scale, bias, _ = _data((2, 4, 4, 3), 8)
    with pytest.raises(ValueError, match="relu=True or gelu=True, not both"):
        pure.batch_norm_train(x, scale, bias, relu=True, gelu=True)
    with pytest.raises(ValueError, match="relu=True or gelu=True, not both"):
        batch_norm(True, "bn", relu=True, gelu=True)
    with pytest.raises(ValueError, match="gelu=True needs relu=False and native=False"):
        FusedBatchNorm(gelu=True).init(jax.random.key(0), x)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kernels", ["lax", "fast", "onednn"])
def test_batch_norm_layer_with_gelu_equals_flax(train, kernels):
    """layers.batch_norm(gelu=True, use_scale=False) on every backend: the variables, outputs,
    running statistics and bias gradient of nn.BatchNorm(use_scale=False) -> nn.gelu."""
    x, _, bias, _ = _data((6, 4, 4, 3), 9)
    ref = nn.BatchNorm(use_running_average=not train, use_scale=False, momentum=0.6,
                       epsilon=1e-5)
    stats = {"mean": jnp.full(3, 0.3), "var": jnp.full(3, 1.7)}

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x):
            return batch_norm(train, "bn", gelu=True, use_scale=False, momentum=0.6)(x)

    def run(apply, b):
        return apply({"params": {"bn": {"bias": b}}, "batch_stats": {"bn": stats}}, x,
                     mutable=["batch_stats"])

    def ref_apply(variables, x, mutable):
        inner = {k: v["bn"] for k, v in variables.items()}
        y, s = ref.apply(inner, x, mutable=mutable)
        return nn.gelu(y, approximate=False), {"batch_stats": {"bn": s["batch_stats"]}}

    with backend.use(kernels):
        variables = Ours().init(jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, variables["params"]) == {"bn": {"bias": (3,)}}
        (y, s), (y_ref, s_ref) = run(Ours().apply, bias), run(ref_apply, bias)
        _close(y, y_ref, "output")
        for k in ("mean", "var"):
            _close(s["batch_stats"]["bn"][k], s_ref["batch_stats"]["bn"][k], k)
        grad = [jax.grad(lambda b, f=f: jnp.sum(jnp.sin(run(f, b)[0])))(bias)
                for f in (ref_apply, Ours().apply)]
        _close(grad[1], grad[0], "dbias", rtol=1e-4)
