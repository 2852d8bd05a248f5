"""The optional oneDNN convolution (jaxcnn.ops.onednn) against lax, and its fallbacks.

Tests marked ``needs_onednn`` skip where the kernels are unavailable (no ``jaxcnn[onednn]``, no
compiler); the fallback and error tests run everywhere. Tolerance (docs/design.md): float32 results
within 1e-5 x max|reference| of ``lax.conv_general_dilated`` and its autodiff gradients.
"""

from __future__ import annotations

import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jaxcnn.ops import backend
from jaxcnn.ops.fast_conv import conv2d_fast, resolve_padding
from jaxcnn.ops.onednn import build, conv2d_onednn

RTOL = 1e-5
DN = ("NHWC", "HWIO", "NHWC")

needs_onednn = pytest.mark.skipif(
    not build.available(), reason=f"oneDNN kernels unavailable: {build.unavailable_reason()}"
)


def _lax_conv(x, k, stride, padding):
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if not isinstance(padding, str):
        padding = resolve_padding(padding, x.shape[1:3], k.shape[:2], s)
    return lax.conv_general_dilated(x, k, s, padding, dimension_numbers=DN,
                                    precision=lax.Precision.HIGHEST)


def _assert_close(got, want, what):
    want = np.asarray(want, np.float64)
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(np.asarray(got, np.float64) - want).max() / scale
    assert err <= RTOL, f"{what}: max error {err:.2e} x max|ref| > {RTOL}"


def _values_and_grads(fn, x, k, g):
    y, vjp = jax.vjp(fn, x, k)
    return (y, *vjp(g))


def _check_against_lax(x, k, stride, padding):
    ref = lambda x, k: _lax_conv(x, k, stride, padding)  # noqa: E731
    mine = jax.jit(lambda x, k, g: _values_and_grads(
        lambda x, k: conv2d_onednn(x, k, stride, padding), x, k, g))
    y = ref(x, k)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
    for got, want, what in zip(mine(x, k, g), _values_and_grads(ref, x, k, g),
                               ("output", "input gradient", "kernel gradient"), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32, what
        _assert_close(got, want, what)


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@needs_onednn
@pytest.mark.parametrize(
    "n,h,w,c,o,kh,kw,stride,padding",
    [
        (128, 32, 32, 3, 32, 3, 3, 1, "SAME"),  # cnn3's first layer
        (16, 16, 16, 32, 64, 3, 3, 1, "SAME"),
        (8, 8, 8, 64, 128, 3, 3, 2, "SAME"),  # resnet's strided conv
        (8, 8, 8, 16, 32, 1, 1, 2, "VALID"),  # its 1x1 projection
        (3, 9, 7, 5, 4, 3, 2, (2, 1), ((1, 0), (2, 1))),  # odd sizes, asymmetric padding
    ],
)
def test_matches_lax_on_network_shapes(n, h, w, c, o, kh, kw, stride, padding):
    _check_against_lax(_random((n, h, w, c), 0), _random((kh, kw, c, o), 2), stride, padding)


@needs_onednn
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3), h=st.integers(3, 11), w=st.integers(3, 11), c=st.integers(1, 6),
    o=st.integers(1, 6), kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3),
    sw=st.integers(1, 3), padding=st.sampled_from(["SAME", "VALID", 1, ((0, 2), (1, 0))]),
)
def test_matches_lax_property(n, h, w, c, o, kh, kw, sh, sw, padding):
    _check_against_lax(_random((n, h, w, c), h * 7 + w), _random((kh, kw, c, o), c * 5 + o),
                       (sh, sw), padding)


@needs_onednn
def test_bitwise_deterministic_run_to_run():
    x, k = _random((64, 16, 16, 32), 0), _random((3, 3, 32, 32), 1)
    g = _random((64, 16, 16, 32), 2)
    step = jax.jit(lambda x, k, g: _values_and_grads(conv2d_onednn, x, k, g))
    first = [np.asarray(a) for a in step(x, k, g)]
    for _ in range(3):
        for a, b in zip(first, step(x, k, g), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))


@needs_onednn
def test_vmap_runs_each_member():
    """Ensembles vmap over models: a batch of kernels (and inputs) gives each member's result."""
    x, k = _random((3, 4, 8, 8, 5), 0), _random((3, 3, 3, 5, 6), 1)
    got = jax.jit(jax.vmap(conv2d_onednn))(x, k)
    for i in range(3):
        _assert_close(got[i], _lax_conv(x[i], k[i], 1, "SAME"), f"member {i}")


@needs_onednn
@pytest.mark.parametrize("name", ["cnn3", "resnet20"])
def test_model_onednn_equals_fast_backend(name):
    """The whole model on the onednn backend (oneDNN convolutions, native BatchNorm kernels, for
    cnn3 with the max pool folded in) computes the function, the running statistics and the
    gradients of the fast backend (pure JAX)."""
    from jaxcnn import models

    x = _random((4, 32, 32, 3), 0)
    model = models.create(name, num_classes=10)
    with backend.use("fast"):
        variables = model.init(jax.random.PRNGKey(0), x)

    def loss(kernels):
        def f(params):
            out, new = model.apply({**variables, "params": params}, x, train=True,
                                   mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.PRNGKey(1)})
            return jnp.sum(out**2), new["batch_stats"]
        with backend.use(kernels):  # a fresh jit per backend: each traces with its kernels
            return jax.jit(jax.value_and_grad(f, has_aux=True))(variables["params"])

    ((l_fast, s_fast), g_fast), ((l_dnn, s_dnn), g_dnn) = loss("fast"), loss("onednn")
    _assert_close(l_dnn, l_fast, "loss")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s_fast),
                            jax.tree_util.tree_leaves(s_dnn), strict=True):
        _assert_close(b, a, f"running statistic {path}")
    # One scale for all leaves: the conv biases before BatchNorm have a zero gradient in exact
    # arithmetic, so theirs are rounding noise of either implementation.
    scale = max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g_fast))
    leaves_dnn = jax.tree_util.tree_leaves(g_dnn)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_fast), leaves_dnn, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=str(path))


def test_bfloat16_falls_back_to_fast_conv_without_native_bfloat16(monkeypatch):
    from jaxcnn.ops.onednn import conv as onednn_conv

    monkeypatch.setattr(onednn_conv, "native_bf16", lambda: False)
    x, k = _random((2, 8, 8, 3), 0).astype(jnp.bfloat16), _random((3, 3, 3, 4), 1)
    k = k.astype(jnp.bfloat16)
    assert "custom_call" not in jax.jit(conv2d_onednn).lower(x, k).as_text()
    np.testing.assert_array_equal(np.asarray(jax.jit(conv2d_onednn)(x, k), np.float32),
                                  np.asarray(jax.jit(conv2d_fast)(x, k), np.float32))


# bfloat16 (docs/design.md): oneDNN accumulates in float32 and rounds each result to bfloat16
# once, so outputs and gradients are within 2^-8 relative of the float32 convolution of the
# same (bfloat16) operands, plus accumulation-order noise: 1e-2 x max|reference| is asserted.
BF16_RTOL = 1e-2

def _check_bf16_against_f32(x, k, stride, padding, bias=None):
    from jaxcnn.ops.onednn.conv import native_bf16

    if not (build.available() and native_bf16()):
        pytest.skip("oneDNN kernels or native bfloat16 unavailable on this CPU")
    xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    lowered = jax.jit(lambda x, k: conv2d_onednn(x, k, stride, padding)).lower(xb, kb)
    assert "jaxcnn_onednn_conv_forward" in lowered.as_text()
    y32 = _lax_conv(xb.astype(jnp.float32), kb.astype(jnp.float32), stride, padding)
    g = _random(y32.shape, 3)
    got = jax.jit(lambda x, k, g: _values_and_grads(
        lambda x, k: conv2d_onednn(x, k, stride, padding), x, k, g))(xb, kb,
                                                                     g.astype(jnp.bfloat16))
    want = _values_and_grads(lambda x, k: _lax_conv(x, k, stride, padding),
                             xb.astype(jnp.float32), kb.astype(jnp.float32),
                             g.astype(jnp.bfloat16).astype(jnp.float32))
    for a, b, what in zip(got, want, ("output", "input gradient", "kernel gradient"),
                          strict=True):
        assert a.dtype == jnp.bfloat16, what
        b = np.asarray(b, np.float64)
        err = np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= BF16_RTOL, f"bfloat16 {what}: max error {err:.2e} x max|ref|"


@needs_onednn
def test_bfloat16_on_airbench_shapes_and_with_a_bias():
    _check_bf16_against_f32(_random((16, 15, 15, 64), 0), _random((3, 3, 64, 256), 1) * 0.05,
                            1, "SAME")
    from jaxcnn.ops.onednn.conv import native_bf16

    if native_bf16():  # a bias on bfloat16 operands: added after the convolution
        x, k = _random((2, 9, 9, 3), 0), _random((2, 2, 3, 24), 1)
        b = _random((24,), 2)
        got = conv2d_onednn(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), 1, "VALID",
                            bias=b.astype(jnp.bfloat16))
        want = _lax_conv(x.astype(jnp.bfloat16).astype(jnp.float32),
                         k.astype(jnp.bfloat16).astype(jnp.float32), 1, "VALID") + b.astype(
            jnp.bfloat16).astype(jnp.float32)
        err = np.abs(np.asarray(got, np.float64) - np.asarray(want)).max()
        assert err <= BF16_RTOL * np.abs(np.asarray(want)).max()


# bfloat16 products (FitConfig.matmul_precision="bfloat16"): float32 operands rounded to
# bfloat16, products accumulated in float32 and returned unrounded, so the output and both
# gradients match the float32 convolution of the rounded operands (and rounded cotangent) to
# float32 accumulation noise: RTOL (1e-5 x max|reference|), as the float32 kernels.
def _check_bf16_products(x, k, stride, padding, bias=None):
    from jaxcnn.ops.onednn.conv import native_bf16

    if not (build.available() and native_bf16()):
        pytest.skip("oneDNN kernels or native bfloat16 unavailable on this CPU")

    def conv(x, k):
        return conv2d_onednn(x, k, stride, padding, bias=bias)

    with jax.default_matmul_precision("bfloat16"):
        lowered = jax.jit(conv).lower(x, k).as_text()
        assert "jaxcnn_onednn_conv_forward" in lowered and "bf16" in lowered
        y = jax.jit(conv)(x, k)
        g = _random(y.shape, 3)
        got = jax.jit(lambda x, k, g: _values_and_grads(conv, x, k, g))(x, k, g)

    def rounded(a):
        return a.astype(jnp.bfloat16).astype(jnp.float32)

    def ref(x, k):
        y = _lax_conv(x, k, stride, padding)
        return y if bias is None else y + bias

    want = _values_and_grads(ref, rounded(x), rounded(k), rounded(g))
    for a, b, what in zip(got, want, ("output", "input gradient", "kernel gradient"),
                          strict=True):
        assert a.dtype == jnp.float32 and a.shape == b.shape, what
        _assert_close(a, b, f"bfloat16 products, {what}")


@needs_onednn
@pytest.mark.parametrize("check", [_check_bf16_against_f32, _check_bf16_products],
                         ids=["bfloat16", "bfloat16_products"])
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3), h=st.integers(3, 11), w=st.integers(3, 11), c=st.integers(1, 8),
    o=st.integers(1, 8), kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2),
    sw=st.integers(1, 2), padding=st.sampled_from(["SAME", "VALID", 1, ((0, 2), (1, 0))]),
)
def test_bfloat16_kernels_match_float32_of_rounded_operands_property(check, n, h, w, c, o, kh,
                                                                      kw, sh, sw, padding):
    check(_random((n, h, w, c), h * 7 + w), _random((kh, kw, c, o), c + o), (sh, sw), padding)


@needs_onednn
def test_bfloat16_products_on_airbench_shapes_and_with_a_bias():
    _check_bf16_products(_random((16, 15, 15, 64), 0), _random((3, 3, 64, 256), 1) * 0.05,
                         1, "SAME")
    _check_bf16_products(_random((4, 32, 32, 3), 0), _random((2, 2, 3, 24), 1), 1, "VALID",
                         bias=_random((24,), 2))


def test_bfloat16_products_need_native_bfloat16(monkeypatch):
    """Without native bfloat16 the precision setting changes nothing: float32 kernels (or the
    pure-JAX twin), float32 values."""
    from jaxcnn.ops.onednn import conv as onednn_conv

    monkeypatch.setattr(onednn_conv, "native_bf16", lambda: False)
    x, k = _random((2, 8, 8, 3), 0), _random((3, 3, 3, 4), 1)
    with jax.default_matmul_precision("bfloat16"):
        lowered = jax.jit(conv2d_onednn).lower(x, k).as_text()
        y = jax.jit(conv2d_onednn)(x, k)
    assert "bf16" not in lowered
    _assert_close(y, _lax_conv(x, k, 1, "SAME"), "float32 without native bfloat16")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="conv2d_onednn supports dilation 1 only"):
        conv2d_onednn(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2)), dilation=2)
    with pytest.raises(ValueError, match="input channels"):
        conv2d_onednn(jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 3, 2)))


@pytest.fixture
def fresh_build_state(monkeypatch, tmp_path):
    """An empty load cache and cache folder, restored afterwards (the real state is kept)."""
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXCNN_ONEDNN", raising=False)
    return tmp_path


def test_turned_off_falls_back_and_says_why(fresh_build_state, monkeypatch):
    monkeypatch.setenv("JAXCNN_ONEDNN", "0")
    assert not build.available()
    assert "JAXCNN_ONEDNN=0" in build.unavailable_reason()
    x, k = _random((2, 6, 6, 3), 0), _random((3, 3, 3, 4), 1)
    _assert_close(jax.jit(conv2d_onednn)(x, k), _lax_conv(x, k, 1, "SAME"), "fallback output")
    if jax.default_backend() == "cpu":
        assert backend.resolve("auto") == "fast"


def test_missing_onednn_names_the_fix(fresh_build_state, monkeypatch):
    """Not installed: a clear reason, and no warning (pure JAX is the expected path)."""
    monkeypatch.setattr(build, "_candidate_prefixes", lambda: [fresh_build_state])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not build.available()
    with pytest.raises(build.OnednnUnavailable, match=r'pip install "jaxcnn\[onednn\]"'):
        build.load()
    # The failure is remembered: no second search, same message.
    with pytest.raises(build.OnednnUnavailable, match="not found under"):
        build.load()


@needs_onednn
def test_first_layer_input_gradient_is_not_computed():
    """The data needs no gradient: XLA drops that oneDNN call from cnn3's compiled step."""
    import re

    from jaxcnn import models

    model = models.create("cnn3", num_classes=10)
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
        return out.sum()

    with backend.use("onednn"):
        hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
    calls = {kind: len(re.findall(rf'custom_call_target="jaxcnn_onednn_conv_{kind}"', hlo))
             for kind in ("forward_bias", "backward_data", "backward_weights_bias")}
    assert calls == {"forward_bias": 6, "backward_data": 5, "backward_weights_bias": 6}


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler")
def test_compiler_failure_leaves_no_library(fresh_build_state, monkeypatch):
    """A failing compiler gives its error output and leaves nothing half-written."""
    root = fresh_build_state / "fake"
    (root / "include/oneapi/dnnl").mkdir(parents=True)
    (root / "include/oneapi/dnnl/dnnl.hpp").write_text("#error this is not oneDNN\n")
    (root / "lib").mkdir()
    (root / "lib/libdnnl.so.3").write_bytes(b"")
    monkeypatch.setattr(build, "_candidate_prefixes", lambda: [root])
    with pytest.raises(build.OnednnUnavailable, match="this is not oneDNN"):
        build.load()
    cache = fresh_build_state / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]
    # Installed but unusable: one warning with the reason, then silence.
    with pytest.warns(RuntimeWarning, match=r"(?s)installed but unusable.*this is not oneDNN"):
        assert not build.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not build.available()


@needs_onednn
def test_build_is_cached_and_reused(fresh_build_state, monkeypatch):
    """The first load compiles into the cache folder; a later process reuses that file."""
    monkeypatch.setattr(build, "_state", {})
    build.load()
    built = list((fresh_build_state / "cache").rglob(build.LIBRARY_NAME))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns

    def no_compiler(*a, **k):
        raise AssertionError("compiled again")

    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setattr(build, "compile_library", no_compiler)
    build.load()
    assert built[0].stat().st_mtime_ns == stamp


@needs_onednn
def test_flop_count_sees_through_the_ffi_calls():
    """jaxcnn.flops traces the pure-JAX twin: oneDNN convs count as lax's (not zero)."""
    from jaxcnn.flops import function_flops

    x, k = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32), jax.ShapeDtypeStruct(
        (3, 3, 4, 5), jnp.float32)
    ours = function_flops(lambda x, k: conv2d_onednn(x, k), x, k)
    assert ours == function_flops(lambda x, k: _lax_conv(x, k, 1, "SAME"), x, k) > 0


@needs_onednn
def test_flop_count_of_a_train_step_already_run_with_the_ffi_calls():
    """jit caches the trace of a step compiled for oneDNN (fit's feed compiles it ahead, from
    the same shapes); the count must not reuse it."""
    from jaxcnn import models
    from jaxcnn.data import ArrayDataset
    from jaxcnn.flops import forward_flops, train_step_flops
    from jaxcnn.train import FitConfig, build
    from jaxcnn.train.feeds import step_temp_bytes
    from jaxcnn.train.mesh import shard_batch

    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, 16).astype(np.int32), tuple("abcdefghij"))
    model = models.create("airbench94", num_classes=10, widths=(8, 16, 16))
    with backend.use("onednn"):
        engine = build(model, FitConfig(epochs=1, batch_size=16, augment=False), data)
        step_temp_bytes(engine.train_step, engine.state, 16, (32, 32, 3))  # as fit's feed
        state, _ = engine.train_step(engine.state, *shard_batch(engine.mesh, data.images,
                                                                  data.labels))
        count = train_step_flops(engine.train_step, state, 16, (32, 32, 3))
        forward = forward_flops(model, state.variables, (16, 32, 32, 3))
        # ... and the step still runs on oneDNN afterwards (the count left its cache alone)
        lowered = engine.train_step.lower(state, *shard_batch(engine.mesh, data.images,
                                                              data.labels))
    assert "jaxcnn_onednn_conv" in lowered.as_text()
    # forward + input and kernel gradients: about 2x (XLA's count) to 3x the forward pass
    assert 1.5 * forward < count < 4 * forward
