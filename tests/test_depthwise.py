"""Depthwise convolution by shifted multiply-adds vs float64 numpy and vs lax, values and grads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn.models.layers import DepthwiseConv
from jaxcnn.ops import backend
from jaxcnn.ops.depthwise import depthwise_conv2d, depthwise_conv2d_lax
from jaxcnn.ops.fast_conv import resolve_padding


def numpy_depthwise(x, k, stride, padding):
    """float64 loops over the window taps: out[n,p,q,c] = sum_ij xp[n,p*s+i,q*s+j,c] k[i,j,0,c]."""
    x = np.asarray(x, np.float64)
    k = np.asarray(k, np.float64)
    kh, kw = k.shape[:2]
    sh, sw = stride
    (t, b), (left, r) = resolve_padding(padding, x.shape[1:3], (kh, kw), stride)
    xp = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for p in range(ho):
        for q in range(wo):
            patch = xp[:, p * sh:p * sh + kh, q * sw:q * sw + kw, :]
            out[:, p, q, :] = np.einsum("nijc,ijc->nc", patch, k[:, :, 0, :])
    return out


paddings = st.one_of(
    st.sampled_from(["SAME", "VALID"]),
    st.integers(0, 2),
    st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
              st.tuples(st.integers(0, 2), st.integers(0, 2))),
)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(3, 9), w=st.integers(3, 9), c=st.integers(1, 5),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3),
       padding=paddings, seed=st.integers(0, 2**16))
def test_matches_float64_numpy(n, h, w, c, kh, kw, sh, sw, padding, seed):
    (t, b), (left, r) = resolve_padding(padding, (h, w), (kh, kw), (sh, sw))
    if h + t + b < kh or w + left + r < kw:
        with pytest.raises(ValueError, match="larger than the padded input"):
            depthwise_conv2d(jnp.zeros((n, h, w, c)), jnp.zeros((kh, kw, 1, c)), (sh, sw), padding)
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = rng.standard_normal((kh, kw, 1, c)).astype(np.float32)
    want = numpy_depthwise(x, k, (sh, sw), padding)
    got = np.asarray(depthwise_conv2d(x, k, (sh, sw), padding))
    lax_out = np.asarray(depthwise_conv2d_lax(x, k, (sh, sw), padding))
    assert got.shape == want.shape == lax_out.shape
    scale = max(np.abs(want).max(), 1e-6)
    assert np.abs(got - want).max() <= 1e-5 * scale
    assert np.abs(lax_out - want).max() <= 1e-5 * scale


@pytest.mark.parametrize(
    "stride,padding", [(1, "SAME"), (2, ((0, 1), (0, 1))), (2, ((1, 2), (1, 2)))]
)
def test_gradients_match_lax(stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 6)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 1, 6)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(depthwise_conv2d_lax(x, k, stride, padding).shape))

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k, stride, padding) * g)

    dx, dk = jax.grad(loss(depthwise_conv2d), argnums=(0, 1))(x, k)
    dx_ref, dk_ref = jax.grad(loss(depthwise_conv2d_lax), argnums=(0, 1))(x, k)
    assert float(jnp.abs(dx_ref).max()) > 0 and float(jnp.abs(dk_ref).max()) > 0
    np.testing.assert_allclose(dx, dx_ref, atol=1e-5 * float(jnp.abs(dx_ref).max()))
    np.testing.assert_allclose(dk, dk_ref, atol=1e-5 * float(jnp.abs(dk_ref).max()))


def test_layer_is_interchangeable_with_nn_conv():
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))
    ref = nn.Conv(8, (3, 3), strides=2, padding=((0, 1), (0, 1)), feature_group_count=8,
                  use_bias=True)
    variables = ref.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda a: a + 0.1, variables)  # non-zero bias
    layer = DepthwiseConv((3, 3), strides=2, padding=((0, 1), (0, 1)), use_bias=True)
    for kernels in ("fast", "lax"):  # shifted multiply-adds / XLA's grouped convolution
        with backend.use(kernels):
            mine = layer.init(jax.random.key(1), x)
            y = layer.apply(variables, x)
        assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, variables)
        np.testing.assert_allclose(y, ref.apply(variables, x), atol=1e-5, rtol=1e-5)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(kh, kw, 1, C\)"):
        depthwise_conv2d(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 3, 3)))
    with pytest.raises(ValueError, match="channels"):
        depthwise_conv2d(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 1, 4)))
    with pytest.raises(ValueError, match="stride"):
        depthwise_conv2d(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 1, 3)), stride=0)
