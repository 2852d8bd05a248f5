"""Pooling against the float64 numpy reference, the course's 4x4 example, gradient routing of
max pooling, global pooling and the error paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import explicit_pads, pool_nd

from jaxcnn import ops

POOLS = {"max": ops.max_pool, "avg": ops.avg_pool, "min": ops.min_pool}

# Course chapter 004, "What is Pooling?": the 4x4 feature map and its 2x2 pools.
COURSE_MAP = np.array([[1, 3, 2, 4], [5, 6, 8, 7], [2, 1, 0, 3], [4, 2, 1, 5]], np.float32)


@st.composite
def pool_cases(draw):
    nd = draw(st.integers(1, 3))
    max_n = {1: 9, 2: 7, 3: 5}[nd]
    spatial = tuple(draw(st.integers(1, max_n)) for _ in range(nd))
    window = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 3)] * nd)))
    kind = draw(st.sampled_from(["SAME", "VALID", "pairs"]))
    if kind == "pairs":  # explicit padding smaller than the window, so no window is all padding
        padding = tuple((draw(st.integers(0, w - 1)), draw(st.integers(0, w - 1))) for w in window)
    else:
        padding = kind
    strides = window if stride is None else stride
    pads = explicit_pads(padding, spatial, window, strides, (1,) * nd)
    for n, k, (lo, hi) in zip(spatial, window, pads, strict=True):
        assume(k <= n + lo + hi)
    x = np.random.default_rng(draw(st.integers(0, 2**31 - 1))).normal(
        size=(draw(st.integers(1, 2)), *spatial, draw(st.integers(1, 3)))
    )
    return x.astype(np.float32), window, stride, padding


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(pool_cases(), st.sampled_from(sorted(POOLS)))
def test_pools_match_numpy(case, kind):
    x, window, stride, padding = case
    y = POOLS[kind](x, window, stride, padding)
    expected = pool_nd(x, kind, window, stride, padding)
    assert y.shape == expected.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_course_pooling_example():
    x = COURSE_MAP[None, :, :, None]
    np.testing.assert_array_equal(ops.max_pool(x, 2)[0, :, :, 0], [[6, 8], [4, 5]])
    np.testing.assert_array_equal(ops.avg_pool(x, 2)[0, :, :, 0], [[3.75, 5.25], [2.25, 2.25]])
    np.testing.assert_array_equal(ops.min_pool(x, 2)[0, :, :, 0], [[1, 2], [1, 0]])
    np.testing.assert_array_equal(ops.max_pool(x, (2, 2), (2, 2), "VALID"), ops.max_pool(x, 2))


def test_max_pool_gradient_routes_to_the_maximum_only():
    x = jnp.asarray(COURSE_MAP[None, :, :, None])
    w = jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
    grad = jax.grad(lambda x: jnp.sum(w * ops.max_pool(x, 2)))(x)[0, :, :, 0]
    expected = np.zeros((4, 4), np.float32)
    expected[1, 1], expected[1, 2], expected[3, 0], expected[3, 3] = 1, 2, 3, 4  # 6, 8, 4, 5
    np.testing.assert_array_equal(grad, expected)
    # average pooling spreads the gradient evenly instead
    grad_avg = jax.grad(lambda x: jnp.sum(ops.avg_pool(x, 2)))(x)
    np.testing.assert_allclose(grad_avg, np.full((1, 4, 4, 1), 0.25))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_max_pool_gradient_is_argmax_indicator(wh, ww, reps, seed):
    # non-overlapping windows and distinct values: d sum(max_pool) / dx is 1 at each window's
    # argmax and 0 elsewhere
    rng = np.random.default_rng(seed)
    h, w = wh * reps, ww * (reps + 1)
    x = rng.permutation(2 * h * w * 2).reshape(2, h, w, 2).astype(np.float32)
    grad = np.asarray(jax.grad(lambda x: jnp.sum(ops.max_pool(x, (wh, ww))))(jnp.asarray(x)))
    blocks = x.reshape(2, h // wh, wh, w // ww, ww, 2)
    is_max = blocks == blocks.max(axis=(2, 4), keepdims=True)
    np.testing.assert_array_equal(grad, is_max.reshape(x.shape).astype(np.float32))
    assert grad.sum() == 2 * (h // wh) * (w // ww) * 2


def test_avg_pool_same_divides_by_real_elements():
    x = np.ones((1, 5, 5, 2), np.float32)
    np.testing.assert_array_equal(ops.avg_pool(x, 3, 1, "SAME"), np.ones((1, 5, 5, 2)))
    np.testing.assert_array_equal(
        ops.avg_pool(x, 2, padding=((1, 0), (0, 1))), np.ones((1, 3, 3, 2))
    )
    # max/min pooling ignore padding too (it never wins), even for all-negative inputs
    neg = -np.ones((1, 5, 5, 1), np.float32)
    np.testing.assert_array_equal(ops.max_pool(neg, 3, 1, "SAME"), neg)
    np.testing.assert_array_equal(ops.min_pool(-neg, 3, 1, "SAME"), -neg)


def test_output_shapes_and_integer_inputs():
    x = np.arange(2 * 7 * 7 * 3).reshape(2, 7, 7, 3).astype(np.int32)
    assert ops.max_pool(x, 2).shape == (2, 3, 3, 3)
    assert ops.max_pool(x, 2, padding="SAME").shape == (2, 4, 4, 3)
    assert ops.max_pool(x, 3, 2).shape == (2, 3, 3, 3)
    assert ops.max_pool(x, 2).dtype == jnp.int32
    np.testing.assert_array_equal(
        ops.max_pool(x, 2, padding="SAME"), pool_nd(x, "max", 2, None, "SAME")
    )
    np.testing.assert_array_equal(
        ops.min_pool(x, 2, padding="SAME"), pool_nd(x, "min", 2, None, "SAME")
    )
    assert ops.avg_pool(x, 2).dtype == jnp.float32
    np.testing.assert_allclose(ops.avg_pool(x, 2, 1), pool_nd(x, "avg", 2, 1), rtol=1e-6)
    assert ops.max_pool(np.zeros((1, 9, 2)), 3).shape == (1, 3, 2)
    assert ops.avg_pool(np.zeros((1, 4, 6, 8, 2)), (2, 3, 4)).shape == (1, 2, 2, 2, 2)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_pools(nd):
    rng = np.random.default_rng(nd)
    x = rng.normal(size=(3, *[4] * nd, 5)).astype(np.float32)
    axes = tuple(range(1, nd + 1))
    assert ops.global_avg_pool(x).shape == (3, 5)
    np.testing.assert_allclose(ops.global_avg_pool(x), x.mean(axis=axes), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ops.global_max_pool(x), x.max(axis=axes))
    # global pooling = pooling with the whole map as the window
    np.testing.assert_allclose(
        ops.avg_pool(x, x.shape[1:-1]).reshape(3, 5), ops.global_avg_pool(x), rtol=1e-5
    )


@pytest.mark.parametrize("fn", list(POOLS.values()))
@pytest.mark.parametrize(
    ("x", "args", "match"),
    [
        (np.zeros((4, 4)), (2,), r"x must have shape \(N, \*spatial, C\).*got shape \(4, 4\)"),
        (np.zeros((1, 4, 4, 1)), (0,), r"window must be a positive int"),
        (np.zeros((1, 4, 4, 1)), ((2, 2, 2),), r"window must be an int or a sequence of 2"),
        (np.zeros((1, 4, 4, 1)), (2, 0), r"stride must be a positive int"),
        (np.zeros((1, 4, 4, 1)), (2, (1, -1)), r"stride\[1\] must be a positive int"),
        (np.zeros((1, 4, 4, 1)), (2, None, "full"), r"padding string must be one of"),
        (np.zeros((1, 4, 4, 1)), (2, None, -1), r"padding must be a non-negative int"),
        (np.zeros((1, 4, 4, 1)), (2, None, ((1, 1),)), r"padding must have one entry per"),
        (
            np.zeros((1, 4, 4, 1)),
            (5,),
            r"window: pooling window size 5 on spatial axis 0 is "
            r"larger than the padded input \(4 \+ 0 \+ 0 = 4\)",
        ),
    ],
)
def test_pool_validation_errors(fn, x, args, match):
    with pytest.raises(ValueError, match=match):
        fn(x, *args)
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda x: fn(x, *args))(jnp.asarray(x))


@pytest.mark.parametrize("fn", [ops.global_avg_pool, ops.global_max_pool])
def test_global_pool_validation(fn):
    with pytest.raises(ValueError, match=r"x must have shape \(N, \*spatial, C\)"):
        fn(np.zeros((3, 5)))


@pytest.mark.parametrize("fn", list(POOLS.values()))
def test_rank3_image_is_not_pooled_in_1d_by_accident(fn):
    """An (H, W, C) image passed without its batch axis: an int window is refused (it would
    pool along W only, the rows taken for a batch), a 2-D window gets the x[None] hint."""
    image = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    with pytest.raises(
        ValueError,
        match=r"x of shape \(4, 6, 3\) with the int window 2 is ambiguous: a batch of 4 1-D "
        r"signals \(N, L, C\), or one \(H, W, C\) image without its batch axis\? Pool the "
        r"signals with window=\(2,\), or the image with x\[None\]",
    ):
        fn(image, 2)
    with pytest.raises(
        ValueError,
        match=r"window \(2, 2\) has 2 entries but x of shape \(4, 6, 3\) has one spatial axis "
        r"\(N, L, C\); x looks like one \(H, W, C\) image without the batch axis: use x\[None\]",
    ):
        fn(image, (2, 2), None, "SAME")
    with pytest.raises(ValueError, match="is ambiguous"):  # also under jit, before XLA
        jax.jit(lambda x: fn(x, 2))(jnp.asarray(image))
    # both explicit forms work and mean different things
    as_image = fn(image[None], 2)[0]
    assert as_image.shape == (2, 3, 3)
    kind = next(k for k, f in POOLS.items() if f is fn)
    np.testing.assert_allclose(as_image, pool_nd(image[None], kind, 2, None, "VALID")[0])
    as_signals = fn(image, (2,))
    assert as_signals.shape == (4, 3, 3)
    np.testing.assert_allclose(as_signals, pool_nd(image, kind, (2,), None, "VALID"))
    # stride as an int with a 1-tuple window is fine; a single 1-D signal may use an int window
    assert fn(image, (2,), 1).shape == (4, 5, 3)
    assert fn(image[:1], 2).shape == (1, 3, 3)
