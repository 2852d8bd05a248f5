"""conv (lax), conv_reference (from scratch, hand-written backward) and true_convolution against
an independent float64 numpy reference, the course's worked example, and every error path."""

import importlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import conv2d_four_loops, conv_nd, explicit_pads

from jaxcnn import ops

conv_module = importlib.import_module("jaxcnn.ops.conv")  # `ops.conv` is the function
RTOL = 1e-5  # max abs error <= RTOL * max |reference|
SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


@st.composite
def conv_cases(draw):
    """A random conv problem: rank 1-3, groups (depthwise included), strides, dilations and
    paddings of every form; the dilated window always fits the padded input."""
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 2))
    depthwise = draw(st.booleans()) and groups > 1
    og = draw(st.integers(1, 2))
    c_in = groups * (1 if depthwise else cg)
    max_n = {1: 9, 2: 8, 3: 5}[nd]
    window = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    spatial = tuple(draw(st.integers(1, max_n)) for _ in range(nd))
    kind = draw(st.sampled_from(["SAME", "VALID", "int", "ints", "pairs"]))
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "ints":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    elif kind == "pairs":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
    else:
        padding = kind
    pads = explicit_pads(padding, spatial, window, stride, dilation)
    for n, k, d, (lo, hi) in zip(spatial, window, dilation, pads, strict=True):
        assume((k - 1) * d + 1 <= n + lo + hi)
    # simple int forms when every axis agrees
    if len(set(stride)) == 1 and draw(st.booleans()):
        stride = stride[0]
    if len(set(dilation)) == 1 and draw(st.booleans()):
        dilation = dilation[0]
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *spatial, c_in)).astype(np.float32)
    k = rng.normal(size=(*window, c_in // groups, groups * og)).astype(np.float32)
    return x, k, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), rng


@SETTINGS
@given(conv_cases())
def test_conv_and_reference_match_float64_numpy(case):
    x, k, kw, _ = case
    expected = conv_nd(x, k, **kw)
    both = jax.jit(lambda x, k: (ops.conv(x, k, **kw), ops.conv_reference(x, k, **kw)))
    y_lax, y_ref = both(x, k)
    assert y_lax.dtype == jnp.float32 and y_ref.dtype == jnp.float32
    assert rel_err(y_lax, expected) <= RTOL
    assert rel_err(y_ref, expected) <= RTOL


@SETTINGS
@given(conv_cases())
def test_reference_backward_matches_lax_vjp(case):
    x, k, kw, rng = case

    def vjps(x, k, g):
        _, vjp_lax = jax.vjp(lambda x, k: ops.conv(x, k, **kw), x, k)
        _, vjp_ref = jax.vjp(lambda x, k: ops.conv_reference(x, k, **kw), x, k)
        return vjp_lax(g), vjp_ref(g)

    out_shape = jax.eval_shape(lambda x, k: ops.conv(x, k, **kw), x, k).shape
    g = rng.normal(size=out_shape).astype(np.float32)
    (dx_lax, dk_lax), (dx_ref, dk_ref) = jax.jit(vjps)(x, k, g)
    assert dx_ref.shape == x.shape and dk_ref.shape == k.shape
    assert rel_err(dx_ref, dx_lax) <= RTOL
    assert rel_err(dk_ref, dk_lax) <= RTOL


def test_reference_backward_matches_numpy_through_linearity():
    # an independent check of the backward (not via lax): L = sum(g * out) is linear in K and in
    # x, so the float64 numpy forward on unit kernels / unit inputs gives the exact gradients
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 2)).astype(np.float32)
    k = rng.normal(size=(2, 3, 2, 3)).astype(np.float32)
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    g = rng.normal(size=conv_nd(x, k, **kw).shape)
    dk_np = np.zeros(k.shape)
    for idx in np.ndindex(*k.shape):
        e = np.zeros(k.shape)
        e[idx] = 1
        dk_np[idx] = np.sum(g * conv_nd(x, e, **kw))
    dx_np = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        e = np.zeros(x.shape)
        e[idx] = 1
        dx_np[idx] = np.sum(g * conv_nd(e, k, **kw))
    _, vjp = jax.vjp(lambda x, k: ops.conv_reference(x, k, **kw), x, k)
    dx, dk = vjp(jnp.asarray(g, jnp.float32))
    assert rel_err(dx, dx_np) <= RTOL
    assert rel_err(dk, dk_np) <= RTOL
    # rows: 6 + 1 (lo pad) = 7 padded, windows of 2 at stride 2 cover padded rows 0..5 only, so
    # the last input row is never reached and gets zero gradient
    assert np.all(np.asarray(dx)[:, -1] == 0) and np.any(np.asarray(dx)[:, -2] != 0)


def test_chunked_batch_path_matches_lax(monkeypatch):
    # force the cache-sized batch chunks (lax.map) that large CPU batches take
    monkeypatch.setattr(conv_module, "_CHUNK_BYTES", 1000)
    assert conv_module._chunk_size(6, 600) == 1 or jax.default_backend() != "cpu"
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 7, 8, 4)).astype(np.float32)
    for groups, kw in [(1, dict(padding="SAME")), (2, dict(stride=2, padding=((1, 2), (0, 1))))]:
        kw = dict(kw, groups=groups)
        k = rng.normal(size=(3, 2, 4 // groups, 4)).astype(np.float32)
        y_lax, vjp_lax = jax.vjp(partial(ops.conv, **kw), x, k)
        y_ref, vjp_ref = jax.vjp(partial(ops.conv_reference, **kw), x, k)
        g = rng.normal(size=y_lax.shape).astype(np.float32)
        assert rel_err(y_ref, y_lax) <= RTOL
        for a, b in zip(vjp_ref(g), vjp_lax(g), strict=True):
            assert rel_err(a, b) <= RTOL


def test_hand_written_backward_is_used(monkeypatch):
    calls = []
    original = conv_module._backward

    def spy(cfg, residuals, g):
        calls.append(cfg)
        return original(cfg, residuals, g)

    monkeypatch.setattr(conv_module, "_backward", spy)
    x = jnp.ones((1, 5, 5, 2))
    k = jnp.ones((3, 3, 2, 3))

    def loss(x, k):
        return jnp.sum(ops.conv_reference(x, k, stride=2, padding="SAME") ** 2)

    assert "custom_vjp_call" in str(jax.make_jaxpr(loss)(x, k))
    grad_jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, k))
    assert "conv_general_dilated" not in grad_jaxpr
    assert len(calls) == 1 and calls[0][0] == (2, 2)
    jax.grad(loss)(x, k)
    assert len(calls) == 2


def test_reference_uses_no_lax_conv():
    x = jnp.ones((2, 6, 6, 4))
    k = jnp.ones((3, 3, 2, 4))
    jaxpr = str(jax.make_jaxpr(lambda x, k: ops.conv_reference(x, k, 2, "SAME", 1, 2))(x, k))
    assert "custom_vjp_call" in jaxpr and "conv_general_dilated" not in jaxpr
    assert "conv_general_dilated" in str(
        jax.make_jaxpr(lambda x, k: ops.conv(x, k, groups=2))(x, k)
    )


def test_reference_jits_with_static_config_and_vmaps():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 7, 7, 3)).astype(np.float32)
    k = rng.normal(size=(3, 3, 1, 6)).astype(np.float32)
    f = jax.jit(ops.conv_reference, static_argnames=("stride", "padding", "dilation", "groups"))
    y = f(x[0], k, stride=2, padding="SAME", dilation=1, groups=3)
    assert rel_err(y, conv_nd(x[0], k, 2, "SAME", 1, 3)) <= RTOL
    yv = jax.vmap(lambda xi: ops.conv_reference(xi, k, padding=1, groups=3))(x)
    assert rel_err(yv, np.stack([conv_nd(xi, k, 1, 1, 1, 3) for xi in x])) <= RTOL


def test_course_vertical_edge_example():
    # Course chapter 004: a 5x5 image whose rows are [10, 10, 10, 0, 0] and the vertical-edge
    # kernel. Erratum: the course prints 30 for the edge columns, but its own sum
    # 10*1 + 10*2 + 10*1 (the left column of the window, right column zeros) is 40.
    image = np.tile(np.array([10, 10, 10, 0, 0], np.float32), (5, 1))
    kernel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
    expected = np.array([[0, 40, 40]] * 3, np.float32)
    x, k = image[None, :, :, None], kernel[:, :, None, None]
    for fn in (ops.conv, ops.conv_reference):
        np.testing.assert_array_equal(np.asarray(fn(x, k))[0, :, :, 0], expected)
    np.testing.assert_array_equal(conv2d_four_loops(image, kernel), expected)
    np.testing.assert_array_equal(
        ops.conv(x, ops.as_kernel(ops.VERTICAL_EDGE))[0, ..., 0], expected
    )


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(["SAME", "VALID", 1, ((0, 2), (1, 0))]),
    st.integers(0, 2**31 - 1),
)
def test_true_convolution_is_conv_with_flipped_kernel(groups, stride, padding, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 7, 6, 2 * groups)).astype(np.float32)
    k = rng.normal(size=(3, 2, 2, groups)).astype(np.float32)
    kw = dict(stride=stride, padding=padding, groups=groups)
    y = ops.true_convolution(x, k, **kw)
    assert rel_err(y, conv_nd(x, k[::-1, ::-1], **kw)) <= RTOL
    if k.shape[:2] != (1, 1):
        assert rel_err(y, conv_nd(x, k, **kw)) > 1e-3  # flipping matters


def test_true_convolution_matches_scipy_convolve_and_differs_from_correlate():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(9, 8))
    kernel = rng.normal(size=(3, 4))
    x = image[None, :, :, None].astype(np.float32)
    k = kernel[:, :, None, None].astype(np.float32)
    y_true = np.asarray(ops.true_convolution(x, k))[0, :, :, 0]
    y_corr = np.asarray(ops.conv(x, k))[0, :, :, 0]
    assert rel_err(y_true, scipy.signal.convolve(image, kernel, mode="valid")) <= RTOL
    assert rel_err(y_corr, scipy.signal.correlate(image, kernel, mode="valid")) <= RTOL
    assert rel_err(y_true, y_corr) > 1e-2
    # 1D: S(i) = sum_m I(i - m) K(m)
    sig, ker = rng.normal(size=10), rng.normal(size=3)
    y1 = ops.true_convolution(
        sig[None, :, None].astype(np.float32), ker[:, None, None].astype(np.float32), padding=2
    )
    assert rel_err(np.asarray(y1)[0, :, 0], np.convolve(sig, ker, mode="full")) <= RTOL


def test_mixed_and_integer_dtypes():
    x = np.arange(2 * 5 * 5 * 1, dtype=np.int32).reshape(2, 5, 5, 1)
    k = np.ones((3, 3, 1, 1), np.float32)
    for fn in (ops.conv, ops.conv_reference):
        y = fn(x, k)
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, conv_nd(x, k), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Validation: ValueError before tracing, naming the argument and the expected form.
# ------------------------------------------------------------------------------------------

FNS = [ops.conv, ops.conv_reference, ops.true_convolution]
X = np.zeros((2, 8, 8, 4), np.float32)
K = np.zeros((3, 3, 4, 6), np.float32)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize(
    ("x", "k", "kwargs", "match"),
    [
        (np.zeros((8, 8)), K, {}, r"x must have shape \(N, \*spatial, C\).*got shape \(8, 8\)"),
        (np.zeros((1, 2, 2, 2, 2, 2, 1)), K, {}, r"x must have shape .*rank 7"),
        (X, np.zeros((3, 4, 6)), {}, r"kernel must have rank 4 .*got kernel shape \(3, 4, 6\)"),
        (X, np.zeros((3, 3, 3, 6)), {}, r"channel mismatch: x has C_in=4 .* 3 \* 1 = 3"),
        (X, np.zeros((3, 3, 1, 6)), {"groups": 3}, r"groups=3 must divide the input channels"),
        (X, np.zeros((3, 3, 2, 5)), {"groups": 2}, r"groups=2 must divide the output channels"),
        (X, np.zeros((3, 3, 1, 6)), {"groups": 2}, r"channel mismatch.*1 \* 2 = 2"),
        (X, K, {"groups": 0}, r"groups must be a positive int.*got 0"),
        (X, K, {"groups": 1.5}, r"groups must be an int"),
        (X, K, {"stride": 0}, r"stride must be a positive int .*got 0"),
        (X, K, {"stride": (1, -2)}, r"stride\[1\] must be a positive int.*got -2"),
        (X, K, {"stride": (1, 1, 1)}, r"stride must be an int or a sequence of 2 ints"),
        (X, K, {"dilation": 0}, r"dilation must be a positive int"),
        (X, K, {"dilation": (2, -1)}, r"dilation\[1\] must be a positive int"),
        (X, K, {"padding": "FULL"}, r"padding string must be one of \('SAME', 'VALID'\).*'FULL'"),
        (X, K, {"padding": -1}, r"padding must be a non-negative int.*got -1"),
        (X, K, {"padding": ((1, 1),)}, r"padding must have one entry per spatial axis \(2\)"),
        (X, K, {"padding": ((1, 1, 1), (0, 0))}, r"padding\[0\] must be a \(lo, hi\) pair"),
        (X, K, {"padding": ((1, -1), (0, 0))}, r"padding\[0\]\[1\] \(hi\) must be a non-neg"),
        (X, K, {"padding": 1.0}, r"padding must be an int"),
        (
            X,
            np.zeros((9, 3, 4, 6)),
            {},
            r"kernel: kernel window size 9 on spatial axis 0 is "
            r"larger than the padded input \(8 \+ 0 \+ 0 = 8\)",
        ),
        (X, K, {"dilation": 5}, r"dilated by 5 to 11 .* larger than the padded input"),
    ],
)
def test_validation_errors(fn, x, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(x, k, **kwargs)


@pytest.mark.parametrize("fn", FNS)
def test_nchw_input_gets_a_transpose_hint(fn):
    x = np.zeros((2, 3, 16, 16), np.float32)  # an RGB batch in NCHW
    k = np.zeros((3, 3, 3, 8), np.float32)
    with pytest.raises(
        ValueError,
        match=r"input looks NCHW; jaxcnn expects NHWC: transpose "
        r"with x\.transpose\(0, 2, 3, 1\)",
    ):
        fn(x, k)
    with pytest.raises(ValueError, match=r"input looks NCW.*x\.transpose\(0, 2, 1\)"):
        fn(np.zeros((2, 3, 16)), np.zeros((3, 3, 8)))
    with pytest.raises(ValueError, match=r"input looks NCDHW.*x\.transpose\(0, 2, 3, 4, 1\)"):
        fn(np.zeros((2, 3, 5, 6, 7)), np.zeros((1, 1, 1, 3, 8)))
    # a genuine NHWC mismatch gets no NCHW hint
    with pytest.raises(ValueError, match=r"channel mismatch") as err:
        fn(np.zeros((2, 16, 16, 4)), k)
    assert "NCHW" not in str(err.value)


def test_validation_runs_under_jit_before_xla():
    k = np.zeros((3, 3, 3, 8), np.float32)
    for fn in FNS:
        with pytest.raises(ValueError, match="input looks NCHW"):
            jax.jit(lambda x, fn=fn: fn(x, k))(jnp.zeros((2, 3, 16, 16)))
        with pytest.raises(ValueError, match="larger than the padded input"):
            jax.jit(lambda x, fn=fn: fn(x, k))(jnp.zeros((1, 2, 2, 3)))


def test_padding_forms_are_equivalent():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 6, 7, 2)).astype(np.float32)
    k = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    base = ops.conv(x, k, padding=((1, 1), (1, 1)))
    for p in ["SAME", "same", 1, (1, 1), [1, 1], [(1, 1), (1, 1)]]:
        np.testing.assert_array_equal(ops.conv(x, k, padding=p), base)
        np.testing.assert_allclose(ops.conv_reference(x, k, padding=p), base, atol=1e-5)
    np.testing.assert_array_equal(ops.conv(x, k, padding="valid"), ops.conv(x, k, padding=0))


@pytest.mark.parametrize("fn", FNS)
def test_oihw_kernel_gets_a_transpose_hint(fn):
    """A PyTorch (out, in, kh, kw) kernel: the hint names the layout and the transpose that
    fixes it, and the transposed kernel then works."""
    hint = (
        r"kernel \({}\) looks like PyTorch's OIHW \(out, in, kh, kw\); jaxcnn expects HWIO: "
        r"use kernel\.transpose\(2, 3, 1, 0\)"
    )
    x = np.zeros((2, 8, 8, 3), np.float32)
    for k_shape, problem in [
        ((16, 3, 5, 5), "channel mismatch"),  # in=3 sits where HWIO has in
        ((16, 3, 3, 3), "larger than the padded input"),  # reads as a 16x3 HWIO window
    ]:
        k = np.zeros(k_shape, np.float32)
        pattern = problem + ".*" + hint.format(", ".join(map(str, k_shape)))
        with pytest.raises(ValueError, match=pattern):
            fn(x, k)
        assert fn(x, k.transpose(2, 3, 1, 0)).shape[-1] == 16
    with pytest.raises(ValueError, match=r"channel mismatch.*OIHW.*transpose\(2, 3, 1, 0\)"):
        fn(np.zeros((1, 8, 8, 16)), np.zeros((32, 16, 3, 3)))
    # grouped: (out, in // groups, kh, kw)
    with pytest.raises(ValueError, match=r"must divide the output channels.*looks like PyTorch"):
        fn(np.zeros((1, 8, 8, 4)), np.zeros((8, 2, 3, 3)), groups=2)
    # 1-D and 3-D kernels get their own names and transposes
    with pytest.raises(
        ValueError,
        match=r"OIW \(out, in, kw\); jaxcnn expects WIO: use "
        r"kernel\.transpose\(2, 1, 0\)",
    ):
        fn(np.zeros((1, 5, 4)), np.zeros((8, 4, 3)))  # in OIW, in sits where WIO has it
    with pytest.raises(
        ValueError,
        match=r"OIDHW \(out, in, kd, kh, kw\); jaxcnn expects DHWIO: "
        r"use kernel\.transpose\(2, 3, 4, 1, 0\)",
    ):
        fn(np.zeros((1, 5, 5, 5, 2)), np.zeros((4, 2, 3, 3, 3)))
    # both in PyTorch layout: one hint naming both transposes
    with pytest.raises(
        ValueError,
        match=r"x and kernel look like PyTorch's NCHW and OIHW .*"
        r"x\.transpose\(0, 2, 3, 1\) and kernel\.transpose\(2, 3, 1, 0\)",
    ):
        fn(np.zeros((2, 3, 16, 16)), np.zeros((8, 3, 5, 5)))


@pytest.mark.parametrize("fn", FNS)
def test_valid_hwio_kernels_that_look_like_oihw_still_work(fn):
    """No layout guessing on a valid call: (16, 3, 3, 3) is a 16x3 HWIO window with 3 -> 3
    channels, (3, 3, 3, 3) is both layouts at once."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 20, 20, 3)).astype(np.float32)
    for k_shape in [(16, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 16)]:
        k = rng.normal(size=k_shape).astype(np.float32)
        y = fn(x, k)
        assert y.shape == (1, 21 - k_shape[0], 18, k_shape[-1])
    # a genuine HWIO channel mismatch gets no layout hint, even where the OIHW reading would
    # fit the channels (3 in) but not the usual square window (4x8)
    for k_shape in [(3, 3, 5, 8), (3, 3, 4, 8)]:
        with pytest.raises(ValueError, match="channel mismatch") as err:
            fn(x, np.zeros(k_shape))
        assert "PyTorch" not in str(err.value) and "NCHW" not in str(err.value)


@pytest.mark.parametrize("fn", FNS)
def test_unbatched_image_gets_a_batch_axis_hint(fn):
    with pytest.raises(
        ValueError,
        match=r"kernel must have rank 3 .*x looks like one "
        r"\(H, W, C\) image without the batch axis: use x\[None\]",
    ):
        fn(np.zeros((8, 8, 3)), np.zeros((3, 3, 3, 4)))
    assert fn(np.zeros((8, 8, 3))[None], np.zeros((3, 3, 3, 4))).shape == (1, 6, 6, 4)
