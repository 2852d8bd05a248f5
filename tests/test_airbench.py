"""airbench94: layout and parameter count, dirac init, data-dependent whitening, BatchNorm
momentum, backend equivalence and bf16. References are written independently here (lax
convolutions, numpy float64 patches via sliding windows)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn import models
from jaxcnn.models.airbench import AirBench94, make_whitening_init, whitening_init
from jaxcnn.ops import backend

SMALL = (32, 32, 16)  # small widths, quick to compile; 24 -> 32 and 32 -> 16 for dirac


def _init_key():
    """Init key with the "rbg" PRNG: the jitted init compiles ~4x faster than with threefry."""
    return jax.random.key(0, impl="rbg")


def _conv(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _keys(tree, prefix=""):
    out = []
    for k, v in tree.items():
        out += _keys(v, f"{prefix}{k}/") if isinstance(v, dict) else [prefix + k]
    return out


@pytest.fixture(scope="module")
def small():
    """(model, variables, x) of airbench94 with the SMALL widths (initialised with the "fast"
    kernels: every backend gives the same parameter tree).

    Everything here is jitted: one compile instead of a hundred eager ones."""
    model = models.create("airbench94", widths=SMALL)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    with backend.use("fast"):
        return model, jax.jit(model.init)(_init_key(), x), x


@pytest.fixture(scope="module")
def train_step(small):
    """backend -> (param gradients, (logits, batch_stats updates)) of one train-mode pass."""
    model, variables, x = small

    def loss(params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"])
        return jnp.sum(logits * jnp.arange(10.0)), (logits, updates)

    results = {}
    for name in ("fast", "lax"):
        with backend.use(name):  # a fresh jit per backend: each traces with its own kernels
            results[name] = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    return results


def test_shapes_and_parameter_count(small):
    model = models.create("airbench94")
    assert isinstance(model, AirBench94)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert jax.eval_shape(functools.partial(model.apply, method="features"), variables,
                          x).shape == (2, 256)

    # whiten: 2x2x3x24 kernel + 24 bias; per group: two 3x3 convs (no bias) and two BatchNorms
    # with a bias only; head: 256 x 10, no bias.
    w0, widths = 24, (64, 256, 256)
    expected = 2 * 2 * 3 * w0 + w0 + 256 * 10
    cin = w0
    for c in widths:
        expected += 9 * cin * c + c + 9 * c * c + c
        cin = c
    assert expected == 1_971_640
    assert sum(a.size for a in jax.tree.leaves(variables["params"])) == expected
    assert sum(a.size for a in jax.tree.leaves(variables["batch_stats"])) == 2 * 2 * sum(widths)

    names = _keys(variables["params"])
    assert not any(n.endswith("scale") for n in names)
    assert sorted(n for n in names if "norm" in n) == [
        f"block{b}/norm{i}/bias" for b in (1, 2, 3) for i in (1, 2)
    ]
    assert list(variables["params"]["head"]) == ["kernel"]
    assert variables["params"]["whiten"]["kernel"].shape == (2, 2, 3, 24)
    assert variables["params"]["block3"]["conv2"]["kernel"].shape == (3, 3, 256, 256)

    # a real forward pass (small widths)
    model, variables, x = small
    logits, features = jax.jit(
        lambda v, x: (model.apply(v, x), model.apply(v, x, method="features"))
    )(variables, x)
    assert logits.shape == (4, 10) and bool(jnp.isfinite(logits).all())
    assert features.shape == (4, SMALL[-1])


def test_registry_options_and_whiten_bn():
    assert models.accepted_options("airbench94") == sorted(
        ["widths", "whiten_width", "whiten_bn", "dirac", "bn_momentum", "bn_eps",
         "logit_scale", "head_std", "dtype"]
    )
    m = models.create("airbench94", num_classes=7, bn_momentum=0.5)
    assert (m.num_classes, m.bn_momentum, m.bn_eps, m.logit_scale) == (7, 0.5, 1e-12, 1 / 9)
    assert m.head_std is None
    # airbench94_muon: the record's head (std 1, logits / 256), the rest fixed alike
    assert "logit_scale" not in models.accepted_options("airbench94_muon")
    muon = models.create("airbench94_muon", num_classes=7)
    # the record's BatchNorm(momentum=0.6) is PyTorch momentum 0.4:
    # running = (1 - 0.4) * running + 0.4 * batch, i.e. bn_momentum 0.6 here
    assert (muon.logit_scale, muon.head_std, muon.bn_momentum) == (1 / 256, 1.0, 0.6)
    assert "bn_momentum" not in models.accepted_options("airbench94_muon")
    with pytest.raises(ValueError, match="unknown option.*'bn_epsilon'"):
        models.create("airbench94", bn_epsilon=1e-5)
    shapes = jax.eval_shape(
        models.create("airbench94", widths=SMALL, whiten_bn=True).init,
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
    )
    assert list(shapes["params"]["whiten_norm"]) == ["bias"]
    assert shapes["batch_stats"]["whiten_norm"]["mean"].shape == (24,)


def test_dirac_init_is_identity_on_first_channels(small):
    params = small[1]["params"]
    for block, conv in (("block1", "conv1"), ("block2", "conv2"), ("block3", "conv1")):
        kernel = params[block][conv]["kernel"]
        cin, cout = kernel.shape[2:]
        n = min(cin, cout)
        x = jax.random.normal(jax.random.key(2), (2, 5, 5, cin))
        y = _conv(x, kernel, "SAME")
        np.testing.assert_allclose(y[..., :n], x[..., :n], atol=1e-6, rtol=0)
    # block1/conv1 (24 -> 32): outputs 24..31 keep the default U(-1/sqrt(fan_in), ...) init
    rest = np.asarray(params["block1"]["conv1"]["kernel"][..., 24:])
    bound = 1 / np.sqrt(9 * 24)
    assert np.abs(rest).max() <= bound and rest.std() > 0.4 * bound


def test_default_init_without_dirac(small):
    model = models.create("airbench94", widths=SMALL, dirac=False)
    params = jax.jit(model.init)(_init_key(), small[2])["params"]
    for block, conv in (("block1", "conv1"), ("block1", "conv2"), ("block3", "conv1")):
        kernel = np.asarray(params[block][conv]["kernel"])
        cin, cout = kernel.shape[2:]
        bound = 1 / np.sqrt(9 * cin)
        assert np.abs(kernel).max() <= bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)  # uniform's std
        n = min(cin, cout)
        assert np.abs(kernel[1, 1, :, :n] - np.eye(cin, n)).max() > 0.5  # not the identity


def _smooth_images(n=64, size=16, seed=0):
    """uint8 (n, size, size, 3) images with correlated neighbours and channels."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, size + 2, size + 2, 3))
    z = sum(z[:, i:i + size, j:j + size] for i in range(3) for j in range(3))  # 3x3 box blur
    z = z @ np.array([[1.0, 0.6, 0.3], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])  # mix channels
    z += rng.normal(scale=0.3, size=z.shape)  # some fine detail
    return np.clip(128 + 12 * z, 0, 255).astype(np.uint8)


def test_whitening_init_decorrelates_patches(small):
    images = _smooth_images()
    mean = images.mean(axis=(0, 1, 2)) / 255
    std = images.std(axis=(0, 1, 2)) / 255
    eps = 5e-4
    variables = small[1]
    init_fn = make_whitening_init(mean, std, eps=eps, max_images=1000)
    assert isinstance(init_fn, functools.partial) and init_fn.func is whitening_init
    new = init_fn(variables, images, jax.random.key(3))
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    kernel, bias = new["params"]["whiten"]["kernel"], new["params"]["whiten"]["bias"]
    assert kernel.shape == (2, 2, 3, 24) and kernel.dtype == jnp.float32
    np.testing.assert_array_equal(bias, np.zeros(24))
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    assert new["params"]["block1"] is variables["params"]["block1"]  # the rest untouched

    # Independent reference: float64 patches from sliding windows, (kh, kw, c) order.
    x = (images / 255.0 - mean) / std
    win = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(1, 2))  # (n,15,15,3,2,2)
    patches = win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12)
    evals = np.sort(np.linalg.eigvalsh(np.cov(patches, rowvar=False, bias=True)))[::-1]
    assert (evals / (evals + eps)).min() < 0.995  # eps matters: not simply the identity

    out = _conv(jnp.asarray(x, jnp.float32), kernel, "VALID")  # whiten conv, no bias
    out = np.asarray(out, np.float64).reshape(-1, 24)[:, :12]
    cov = np.cov(out, rowvar=False, bias=True)
    # float32 inputs and conv; outputs have unit scale, so 1e-4 absolute is ample.
    np.testing.assert_allclose(cov, np.diag(evals / (evals + eps)), atol=1e-4, rtol=0)

    # max_images caps the images used.
    capped = whitening_init(variables, images, None, mean=mean, std=std, max_images=8)
    first8 = whitening_init(variables, images[:8], None, mean=mean, std=std)
    np.testing.assert_array_equal(capped["params"]["whiten"]["kernel"],
                                  first8["params"]["whiten"]["kernel"])


def test_whitening_init_needs_width_24():
    model = models.create("airbench94", widths=SMALL, whiten_width=16)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="whiten_width == 2 \\* 2\\*2\\*3 = 24.*got 16"):
        whitening_init(variables, _smooth_images(4), None, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ValueError, match="params\\['whiten'\\]"):
        whitening_init({"params": {}}, _smooth_images(4), None, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_train_forward_updates_running_stats_with_momentum(small, train_step):
    _, variables, x = small
    p = variables["params"]
    # Independent forward to block1's first BatchNorm: whiten, exact GELU, conv1, 2x2 max pool.
    h = _conv(x, p["whiten"]["kernel"], "VALID") + p["whiten"]["bias"]
    h = jax.nn.gelu(h, approximate=False)
    h = _conv(h, p["block1"]["conv1"]["kernel"], "SAME")[:, :30, :30]  # 31 -> 15 (floor)
    h = np.asarray(h, np.float64).reshape(4, 15, 2, 15, 2, SMALL[0]).max(axis=(2, 4))
    for impl in ("fast", "lax"):
        stats = train_step[impl][1][1]["batch_stats"]["block1"]["norm1"]
        # bn_momentum 0.4: running = 0.4 * running (mean 0, var 1 at init) + 0.6 * batch
        np.testing.assert_allclose(stats["mean"], 0.6 * h.mean(axis=(0, 1, 2)), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(stats["var"], 0.4 + 0.6 * h.var(axis=(0, 1, 2)), rtol=1e-4)


def test_backends_agree_on_logits_stats_and_gradients(train_step):
    """"fast" (hand-written backward passes) and "lax" compute the same function."""
    (g_fast, aux_fast), (g_lax, aux_lax) = train_step["fast"], train_step["lax"]
    for a, b in zip(jax.tree.leaves(aux_fast), jax.tree.leaves(aux_lax), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_lax), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_bfloat16_gives_finite_float32_logits(small):
    _, variables, x = small
    model = models.create("airbench94", widths=SMALL, dtype=jnp.bfloat16)

    @jax.jit
    def train_then_eval(variables, x):
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates, model.apply({**variables, **updates}, x)

    logits, updates, eval_logits = train_then_eval(variables, x)
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(updates))
    assert eval_logits.dtype == jnp.float32 and bool(jnp.isfinite(eval_logits).all())
