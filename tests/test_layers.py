"""layers.Conv vs flax.linen.Conv, and max_pool_2x2 vs flax.linen.max_pool."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models.layers import Conv, max_pool_2x2
from jaxcnn.ops import backend, onednn


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("impl", ["fast", "lax", pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn.available(), reason="oneDNN unavailable"))])
@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=(3, 3), padding="SAME"),
        dict(kernel_size=(3, 3), strides=2, padding="SAME"),
        dict(kernel_size=(1, 1), padding="VALID", use_bias=False),
        dict(kernel_size=(5, 3), strides=(2, 1), padding=((2, 1), (0, 1))),
    ],
)
def test_conv_matches_nn_conv(impl, kw):
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 4))
    ref = nn.Conv(6, **kw)
    ours = Conv(6, **kw)
    v = ref.init(jax.random.key(1), x)
    with backend.use(impl):
        v_ours = ours.init(jax.random.key(1), x)
    # Same parameter tree, shapes and initial values.
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_ours)
    assert max(jax.tree.leaves(jax.tree.map(rel_err, v_ours, v))) == 0

    def loss(m):
        return lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))

    with backend.use(impl):  # traced with these kernels (a fresh function per jit)
        y, g = ours.apply(v, x), jax.jit(jax.grad(loss(ours), (0, 1)))(v, x)
    y_ref = ref.apply(v, x)
    assert y.shape == y_ref.shape and rel_err(y, y_ref) <= 1e-5
    g_ref = jax.jit(jax.grad(loss(ref), (0, 1)))(v, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        assert rel_err(a, b) <= 1e-5


def test_conv_dtypes():
    x = jnp.ones((1, 6, 6, 3))
    m = Conv(4, dtype=jnp.bfloat16)
    v = m.init(jax.random.key(0), x)
    assert v["params"]["kernel"].dtype == jnp.float32
    y = m.apply(v, x)
    assert y.dtype == jnp.bfloat16
    g = jax.grad(lambda p: m.apply(p, x).astype(jnp.float32).sum())(v)
    assert g["params"]["kernel"].dtype == jnp.float32
    ref = nn.Conv(4, (3, 3), dtype=jnp.bfloat16).apply(v, x)
    assert rel_err(y, ref) <= 2**-7


def test_conv_bad_backend_setting_is_named(monkeypatch):
    monkeypatch.setenv("JAXCNN_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="JAXCNN_BACKEND: unknown backend 'cudnn'"):
        Conv(4).init(jax.random.key(0), jnp.ones((1, 5, 5, 2)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 2, 2, 1)])
def test_max_pool_matches_flax(shape):
    # Distinct values: no ties, so the gradients must agree exactly.
    x = jax.random.permutation(jax.random.key(0), np.prod(shape)).reshape(shape).astype(jnp.float32)
    ref = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2))  # noqa: E731
    assert np.array_equal(max_pool_2x2(x), ref(x))
    w = jax.random.normal(jax.random.key(1), ref(x).shape)
    g = jax.grad(lambda a: jnp.sum(w * max_pool_2x2(a)))(x)
    g_ref = jax.grad(lambda a: jnp.sum(w * ref(a)))(x)
    assert np.array_equal(g, g_ref)


def test_max_pool_ties_go_to_the_first_maximum_like_flax():
    x = jnp.array([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 2, 2, 1)
    g = jax.grad(lambda a: max_pool_2x2(a).sum())(x)
    np.testing.assert_array_equal(g.reshape(2, 2), [[0, 1], [0, 0]])
    # After a ReLU: many all-zero windows; the gradients agree with flax's bit for bit.
    a = jnp.maximum(jax.random.normal(jax.random.key(2), (4, 8, 6, 5)).round(1), 0.0)
    w = jax.random.normal(jax.random.key(3), (4, 4, 3, 5))
    g = jax.grad(lambda t: jnp.sum(w * max_pool_2x2(t)))(a)
    g_ref = jax.grad(lambda t: jnp.sum(w * nn.max_pool(t, (2, 2), strides=(2, 2))))(a)
    assert int((a == 0).sum()) > a.size // 3
    np.testing.assert_array_equal(g, g_ref)


def test_max_pool_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        max_pool_2x2(jnp.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="H, W >= 2"):
        max_pool_2x2(jnp.zeros((1, 1, 4, 1)))


def _residuals(fn, *args):
    """(shape, dtype) of every array jax.vjp keeps for fn's backward pass."""
    _, vjp = jax.vjp(fn, *args)
    return [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(vjp)]


def test_max_pool_backward_keeps_an_int8_route_not_its_input():
    """The backward pass of conv -> pool must not need the conv's full-resolution output:
    all it keeps is the int8 window position of each maximum (one byte per pooled value)."""
    x = jax.random.normal(jax.random.key(4), (2, 8, 7, 3))  # odd W: the last column dropped
    kept = _residuals(lambda a: max_pool_2x2(a * 2.0), x)
    assert ((2, 4, 3, 3), jnp.int8) in kept
    assert all(np.prod(shape) < x.size // 4 for shape, _ in kept), kept


@pytest.mark.skipif(not (onednn.available() and onednn.native_bf16()),
                    reason="oneDNN kernels or native bfloat16 unavailable on this CPU")
def test_conv_precision_overrides_the_runs_bfloat16_products():
    """Under ``jax.default_matmul_precision("bfloat16")`` a Conv multiplies rounded operands;
    ``precision="float32"`` keeps that layer exact (airbench's whitening layer)."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 5))
    params = Conv(7).init(jax.random.key(1), x)
    k = params["params"]["kernel"]

    def ref(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)

    def rounded(a):
        return a.astype(jnp.bfloat16).astype(jnp.float32)

    with backend.use("onednn"), jax.default_matmul_precision("bfloat16"):
        default = Conv(7).apply(params, x)
        exact = Conv(7, precision="float32").apply(params, x)
    with backend.use("onednn"):
        asked = Conv(7, precision="bfloat16").apply(params, x)
    assert rel_err(default, ref(rounded(x), rounded(k))) < 1e-5
    assert rel_err(default, ref(x, k)) > 1e-4  # the products were rounded
    assert rel_err(asked, default) == 0.0
    assert rel_err(exact, ref(x, k)) < 1e-5
    with pytest.raises(ValueError, match="Conv precision must be None, 'float32' or 'bfloat16'"):
        Conv(7, precision="fp8").init(jax.random.key(1), x)
