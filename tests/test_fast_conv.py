"""conv2d_fast vs lax.conv_general_dilated: values and gradients (jax.vjp of the lax conv)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jaxcnn.ops.fast_conv import conv2d_fast, kernel_grad, resolve_padding

DN = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, k, stride, padding):
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if not isinstance(padding, str):
        padding = resolve_padding(padding, x.shape[1:3], k.shape[:2], s)
    return lax.conv_general_dilated(x, k, s, padding, dimension_numbers=DN)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def check(x, k, stride, padding, tol=1e-5):
    """Values and both gradients of conv2d_fast vs jax.vjp of the lax conv.

    Run eagerly: every example has new shapes, and op-by-op dispatch (whose small per-primitive
    compilations are cached) is much cheaper here than compiling one jitted function each time.
    """
    y, vjp = jax.vjp(lambda a, b: conv2d_fast(a, b, stride, padding), x, k)
    yr, vjp_r = jax.vjp(lambda a, b: lax_conv(a, b, stride, padding), x, k)
    g = jax.random.normal(jax.random.key(7), y.shape, y.dtype)
    for got, want in zip((y, *vjp(g)), (yr, *vjp_r(g)), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert rel_err(got, want) <= tol


PADDINGS = st.one_of(
    st.sampled_from(["SAME", "VALID"]),
    st.integers(0, 2),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.tuples(
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ),
)


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(3, 9),
    w=st.integers(3, 9),
    c=st.integers(1, 5),
    o=st.integers(1, 5),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    stride=st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    padding=PADDINGS,
    seed=st.integers(0, 2**16),
)
def test_matches_lax_values_and_grads(n, h, w, c, o, kh, kw, stride, padding, seed):
    kx, kk = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, h, w, c))
    k = jax.random.normal(kk, (kh, kw, c, o))
    check(x, k, stride, padding)


@pytest.mark.parametrize(
    "shape,cout,stride,padding",
    [
        ((4, 32, 32, 3), 8, 1, "SAME"),  # cnn3's first layer, fewer filters
        ((64, 8, 8, 4), 4, 1, "SAME"),  # several kernel-gradient chunks (lax.scan)
        ((2, 15, 15, 8), 8, 2, "SAME"),  # odd size, stride 2: SAME pads (0, 1)
    ],
)
def test_cnn_shapes_under_jit(shape, cout, stride, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout)) * 0.1

    def loss(f):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.tanh(f(a, b, stride, padding))), (0, 1)))

    for got, want in zip(loss(conv2d_fast)(x, k), loss(lax_conv)(x, k), strict=True):
        assert rel_err(got, want) <= 1e-5


def test_kernel_grad_chunking():
    x = jax.random.normal(jax.random.key(0), (12, 6, 6, 3))
    g = jax.random.normal(jax.random.key(1), (12, 6, 6, 2))
    pads = ((1, 1), (1, 1))
    want = kernel_grad(x, g, (3, 3), (1, 1), pads, chunk_positions=None)
    for target in (1, 36, 72, 100, 10**6):  # 12, 12, 6, 4 and 1 chunks
        got = kernel_grad(x, g, (3, 3), (1, 1), pads, chunk_positions=target)
        assert rel_err(got, want) <= 1e-6


def test_kernel_grad_is_gemm_form_of_lax_transpose():
    x = jax.random.normal(jax.random.key(0), (3, 7, 6, 4))
    g = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))
    k = jnp.zeros((3, 3, 4, 5))
    pads = ((1, 1), (1, 1))
    want = jax.vjp(lambda kk: lax_conv(x, kk, 2, pads), k)[1](g)[0]
    assert rel_err(kernel_grad(x, g, (3, 3), (2, 2), pads), want) <= 1e-5


def test_bfloat16_accumulates_in_float32():
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 16))
    k = jax.random.normal(jax.random.key(1), (3, 3, 16, 8)) * 0.1
    xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: conv2d_fast(a, b), xb, kb)
    assert y.dtype == jnp.bfloat16
    g = jnp.ones(y.shape, jnp.bfloat16)
    dx, dk = vjp(g)
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.bfloat16
    # Reference in float32 on the same (bf16-rounded) inputs: only output rounding differs.
    x32, k32 = xb.astype(jnp.float32), kb.astype(jnp.float32)
    yr, vjp_r = jax.vjp(lambda a, b: lax_conv(a, b, 1, "SAME"), x32, k32)
    dxr, dkr = vjp_r(jnp.ones(yr.shape))
    for got, want in ((y, yr), (dx, dxr), (dk, dkr)):
        assert rel_err(got, want) <= 2**-7  # one bf16 rounding of the result


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(stride=0), "stride"),
        (dict(stride=(1, 2, 3)), "stride"),
        (dict(padding="FULL"), "padding"),
        (dict(padding=(1, 2, 3)), "padding"),
        (dict(padding=-1), "padding"),
        (dict(dilation=2), "dilation"),
        (dict(groups=2), "groups"),
    ],
)
def test_bad_arguments(kwargs, match):
    x, k = jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match=match):
        conv2d_fast(x, k, **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="input channels"):
        conv2d_fast(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        conv2d_fast(jnp.zeros((5, 5, 3)), jnp.zeros((3, 3, 3, 4)))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d_fast(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 4)), padding="VALID")
    with pytest.raises(ValueError, match="floating"):
        conv2d_fast(jnp.zeros((1, 5, 5, 3), jnp.int32), jnp.zeros((3, 3, 3, 4), jnp.int32))
