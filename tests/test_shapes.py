"""Shape formulas: the course's worked numbers, agreement with the real ops, receptive fields
measured through gradients, parameter counts, and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcnn import ops


def test_course_output_sizes():
    assert ops.output_size(32, 5, stride=1, padding=2) == 32
    assert ops.output_size(28, 3, stride=2) == 13
    assert ops.output_size(5, 3, 2) == 2
    assert ops.output_size(28, 3) == 26  # conv 3x3 valid on MNIST (course Keras summary)
    assert ops.output_size(26, 2, 2) == 13  # then 2x2 max pool


def test_output_size_padding_forms():
    assert ops.output_size(7, 3, 2, "same") == 4 == ops.output_size(7, 3, 2, "SAME")
    assert ops.output_size(7, 3, 2, "valid") == 3 == ops.output_size(7, 3, 2, 0)
    assert ops.output_size(7, 3, 1, (0, 2)) == 7
    assert ops.output_size(7, 3, 1, (2, 0)) == 7
    assert ops.output_size(9, 3, 1, 0, dilation=2) == 5
    assert ops.output_size(9, 3, 1, "same", dilation=4) == 9


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 20),
    st.integers(1, 5),
    st.integers(1, 4),
    st.one_of(
        st.integers(0, 3), st.sampled_from(["same", "valid"]), st.tuples(*[st.integers(0, 3)] * 2)
    ),
    st.integers(1, 3),
)
def test_output_size_agrees_with_conv_and_pool(n, k, s, p, d):
    conv_pad = p.upper() if isinstance(p, str) else [(p, p)] if isinstance(p, int) else [p]
    x = jax.ShapeDtypeStruct((1, n, 1), jnp.float32)
    kernel = jax.ShapeDtypeStruct((k, 1, 1), jnp.float32)
    try:
        expected = jax.eval_shape(lambda x, w: ops.conv(x, w, s, conv_pad, d), x, kernel).shape[1]
    except ValueError:
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.output_size(n, k, s, p, d)
        return
    assert ops.output_size(n, k, s, p, d) == expected
    if p == "same":
        assert expected == -(-n // s)
    if d == 1:
        assert expected == jax.eval_shape(lambda x: ops.max_pool(x, k, s, conv_pad), x).shape[1]


def test_same_padding():
    assert ops.same_padding(3) == (1, 1)
    assert ops.same_padding(5) == (2, 2)
    assert ops.same_padding(4) == (1, 2)  # TensorFlow: the extra zero goes on the high side
    assert ops.same_padding(1) == (0, 0)
    assert ops.same_padding(3, dilation=2) == (2, 2)
    assert ops.same_padding(2, dilation=3) == (1, 2)
    for k in range(1, 8):
        for d in range(1, 4):
            lo, hi = ops.same_padding(k, d)
            assert ops.output_size(10, k, 1, (lo, hi), d) == 10


def test_same_padding_with_stride_is_tensorflows_asymmetric_rule():
    # worked by hand: out = ceil(n / s), total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    assert ops.same_padding(3, stride=2, size=224) == (0, 1)  # out 112, total 1
    assert ops.same_padding(5, stride=2, size=224) == (1, 2)  # out 112, total 3
    assert ops.same_padding(5, stride=1, size=56) == (2, 2)
    assert ops.same_padding(3, stride=2, size=7) == (1, 1)  # odd size: out 4, total 2
    assert ops.same_padding(1, stride=1, size=1) == (0, 0)
    assert ops.same_padding(1, stride=3, size=7) == (0, 0)  # out 3: taps 0, 3, 6 fit
    assert ops.same_padding(2, stride=4, size=5) == (0, 1)  # out 2, total (1*4 + 2) - 5 = 1
    assert ops.same_padding(3, 2, stride=2, size=8) == (1, 2)  # extent 5: out 4, total 3
    assert ops.same_padding(3, stride=4, size=4) == (0, 0)  # total would be -1: clipped at 0
    for k in range(1, 6):  # at stride 1 the size does not matter
        for n in range(1, 9):
            assert ops.same_padding(k, stride=1, size=n) == ops.same_padding(k)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 24), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
def test_same_padding_is_what_lax_same_pads(n, k, s, d):
    lo, hi = ops.same_padding(k, d, stride=s, size=n)
    assert 0 <= lo <= hi <= lo + 1
    assert ops.output_size(n, k, s, (lo, hi), d) == -(-n // s)
    # lax's own "SAME" equals a float64 numpy correlation with these pads (small integers, so
    # float32 sums are exact)
    x = np.random.default_rng(n * 100 + k).integers(-3, 4, n).astype(np.float64)
    w = np.random.default_rng(k).integers(-3, 4, k).astype(np.float64)
    xp = np.pad(x, (lo, hi))
    want = [sum(xp[p * s + t * d] * w[t] for t in range(k)) for p in range(-(-n // s))]
    same = jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32)[None, :, None], jnp.asarray(w, jnp.float32)[:, None, None],
        (s,), "SAME", rhs_dilation=(d,), dimension_numbers=("NWC", "WIO", "NWC"),
    )
    np.testing.assert_array_equal(np.asarray(same)[0, :, 0], want)


def test_same_padding_needs_the_size_at_a_stride():
    with pytest.raises(ValueError, match="depends on the input length: pass size="):
        ops.same_padding(3, stride=2)
    with pytest.raises(ValueError, match="size must be a positive int"):
        ops.same_padding(3, stride=2, size=0)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        ops.same_padding(3, stride=0, size=5)


def test_receptive_field_of_a_conv_pool_stack():
    # conv3 -> pool2 -> conv3 -> pool2. Course chapter 004 says 3, 6, 10, 20 ("doubled!"), but a
    # pool only adds (k - 1) * jump: the receptive fields are 3, 4, 8, 10.
    rf = ops.receptive_field([(3, 1), (2, 2), (3, 1), (2, 2)])
    assert [r.size for r in rf] == [3, 4, 8, 10]
    assert [r.jump for r in rf] == [1, 2, 2, 4]
    assert rf[-1].start == 4.5
    assert isinstance(rf[0], ops.RFLayer)
    # three stacked 3x3 convs see 7x7 (the VGG argument); dilation grows it faster
    assert ops.receptive_field([(3, 1)] * 3)[-1].size == 7
    assert [r.size for r in ops.receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4)])] == [3, 7, 15]
    dicts = [{"kernel": 7, "stride": 2, "padding": 3}, {"kernel": 3, "stride": 2, "padding": 1}]
    rf = ops.receptive_field(dicts)
    assert [(r.size, r.jump, r.start) for r in rf] == [(7, 2, 0.0), (11, 4, 0.0)]
    assert ops.receptive_field([(3, 1, 1, 1)])[0].start == 0.0


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2)), min_size=1, max_size=4
    )
)
def test_receptive_field_matches_gradient_support(layers):
    # the receptive field of one output unit = the input pixels its gradient reaches, through
    # a stack of 1D all-ones convs (positive weights, so nothing cancels)
    rf = ops.receptive_field(layers)[-1]
    n = rf.size + 2 * rf.jump + 8

    def net(x):
        for k, s, d in layers:
            x = ops.conv(x, jnp.ones((k, 1, 1)), stride=s, dilation=d)
        return x

    try:
        out_len = jax.eval_shape(net, jax.ShapeDtypeStruct((1, n, 1), jnp.float32)).shape[1]
    except ValueError:
        return  # input shrank below a window: not a valid stack for this n
    unit = min(1, out_len - 1)
    grad = jax.jit(jax.grad(lambda x: net(x)[0, unit, 0]))(jnp.ones((1, n, 1)))[0, :, 0]
    support = np.nonzero(np.asarray(grad))[0]
    assert support[-1] - support[0] + 1 == rf.size
    assert (support[0] + support[-1]) / 2 == rf.start + unit * rf.jump


def test_parameter_counts():
    assert ops.conv_params(3, 3, 3, 50) == 1_400  # 50 3x3 filters on a 128x128x3 image
    assert ops.dense_params(784, 128) == 100_480
    assert ops.conv_params(3, 3, 3, 50, bias=False) == 1_350
    assert ops.dense_params(784, 128, bias=False) == 100_352
    assert ops.conv_params(5, 5, 1, 6) == 156  # LeNet-5 C1
    assert ops.conv_params(3, 3, 32, 32, groups=32) == 3 * 3 * 32 + 32  # depthwise
    # the input size does not matter; a dense layer on the flattened 128x128x3 image does
    assert ops.dense_params(128 * 128 * 3, 50) == 2_457_650


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ops.output_size(0, 3), r"n must be a positive int.*got 0"),
        (lambda: ops.output_size(5, 0), r"kernel must be a positive int"),
        (lambda: ops.output_size(5, 3, 0), r"stride must be a positive int"),
        (lambda: ops.output_size(5, 3, 1, -1), r"padding must be a non-negative int"),
        (lambda: ops.output_size(5, 3, 1, 0, 0), r"dilation must be a positive int"),
        (lambda: ops.output_size(5, 3, 1, "full"), r"padding string must be 'same' or 'valid'"),
        (lambda: ops.output_size(5, 3, 1, (1, 2, 3)), r"padding must be .* \(lo, hi\) pair"),
        (lambda: ops.output_size(5, 3, 1, (1, -2)), r"padding\[1\] \(hi\) must be a non-neg"),
        (lambda: ops.output_size(2, 5), r"kernel=5 .* larger than the padded input"),
        (lambda: ops.output_size(2.5, 1), r"n must be an int"),
        (lambda: ops.output_size(True, 1), r"n must be an int; got bool"),
        (lambda: ops.same_padding(0), r"kernel must be a positive int"),
        (lambda: ops.same_padding(3, -1), r"dilation must be a positive int"),
        (lambda: ops.receptive_field([]), r"layers must be a non-empty sequence"),
        (lambda: ops.receptive_field([(3,)]), r"layers\[0\] must be \(kernel, stride\)"),
        (lambda: ops.receptive_field([(3, 1), (3, 0)]), r"layers\[1\] stride must be a positive"),
        (lambda: ops.receptive_field([{"k": 3}]), r"layers\[0\] as a dict needs 'kernel'"),
        (lambda: ops.conv_params(3, 3, 0, 5), r"c_in must be a positive int"),
        (lambda: ops.conv_params(3, 3, 4, 6, groups=4), r"groups=4 must divide c_in=4 and c_out=6"),
        (lambda: ops.dense_params(784, -1), r"n_out must be a positive int"),
    ],
)
def test_shape_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
