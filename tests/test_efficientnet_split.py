"""EfficientNet-Lite split forward: stem_and_blocks + from_block == the whole network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxcnn.models.efficientnet_lite import EfficientNetLite
from jaxcnn.ops import backend

# stem, block0..block3, head_conv: 6 modules, strides 2, 1, 2, 1, 2 (32 px -> 4 px)
TINY_STAGES = ((1, 3, 1, 8, 1), (6, 3, 2, 16, 2), (6, 5, 2, 24, 1))


@pytest.fixture(scope="module")
def tiny():
    model = EfficientNetLite(num_classes=3, stages=TINY_STAGES, stem_features=8,
                             head_features=32)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = dict(jax.jit(model.init)(jax.random.key(0), x))
    # non-trivial running statistics, so inference mode differs from batch statistics
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    variables["batch_stats"] = jax.tree.unflatten(
        tree, [a + 0.3 * jax.random.uniform(k, a.shape) for a, k in zip(leaves, keys, strict=True)])
    return model, variables, x


def test_module_names_are_the_param_keys(tiny):
    model, variables, _ = tiny
    assert model.module_names() == ("stem", "block0", "block1", "block2", "block3", "head_conv")
    assert set(variables["params"]) == {*model.module_names(), "head"}
    assert len(EfficientNetLite().module_names()) == 18


def test_split_composes_to_the_full_forward_at_every_point(tiny):
    model, variables, x = tiny
    full = model.apply(variables, x, train=False)
    feats = model.apply(variables, x, train=False, return_features=True)
    n = len(model.module_names())
    shapes = []
    for k in range(n + 1):
        h = model.apply(variables, x, train=False, method=model.stem_and_blocks, upto=k)
        shapes.append(h.shape[1:])
        out = model.apply(variables, h, train=False, method=model.from_block, start=k)
        np.testing.assert_allclose(out, full, rtol=1e-6, atol=1e-6, err_msg=f"split at {k}")
        f = model.apply(variables, h, train=False, method=model.from_block, start=k,
                        return_features=True)
        np.testing.assert_allclose(f, feats, rtol=1e-6, atol=1e-6, err_msg=f"split at {k}")
    assert shapes[0] == (32, 32, 3) and shapes[1] == (16, 16, 8) and shapes[-1] == (4, 4, 32)
    # the bottom part needs only its own variables (the cache key relies on it)
    below = {c: {m: t[m] for m in model.module_names()[:3]} for c, t in variables.items()}
    np.testing.assert_array_equal(
        model.apply(below, x, method=model.stem_and_blocks, upto=3),
        model.apply(variables, x, method=model.stem_and_blocks, upto=3))
    with pytest.raises(ValueError, match=r"upto must be an int in \[0, 6\]"):
        model.apply(variables, x, method=model.stem_and_blocks, upto=7)
    with pytest.raises(ValueError, match="start must be an int"):
        model.apply(variables, x, method=model.from_block, start=-1)


def test_split_in_train_mode_matches_batch_stats_and_dropout(tiny):
    model, variables, x = tiny
    rngs = {"dropout": jax.random.key(3)}
    full, upd = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    h, upd1 = model.apply(variables, x, train=True, method=model.stem_and_blocks, upto=3,
                          mutable=["batch_stats"])
    out, upd2 = model.apply(variables, h, train=True, method=model.from_block, start=3,
                            rngs=rngs, mutable=["batch_stats"])
    np.testing.assert_allclose(out, full, rtol=1e-6, atol=1e-6)
    # each part updates the running statistics of its own modules (and returns the others as
    # they were)
    bottom = model.module_names()[:3]
    merged = {m: (upd1 if m in bottom else upd2)["batch_stats"][m] for m in upd["batch_stats"]}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 merged, dict(upd["batch_stats"]))


@pytest.mark.parametrize(
    "k", [1, pytest.param(4, marks=pytest.mark.slow), pytest.param(6, marks=pytest.mark.slow)]
)
def test_top_part_gradient_equals_full_gradient(tiny, k):
    model, variables, x = tiny
    y = jnp.array([0, 1, 2, 1])

    def loss(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def full_loss(p):
        return loss(model.apply({**variables, "params": p}, x, train=False))

    h = model.apply(variables, x, train=False, method=model.stem_and_blocks, upto=k)

    def top_loss(p):
        return loss(model.apply({**variables, "params": p}, h, train=False,
                                method=model.from_block, start=k))

    g_full = jax.jit(jax.grad(full_loss))(variables["params"])
    g_top = jax.jit(jax.grad(top_loss))(variables["params"])
    g_full, g_top = (traverse_util.flatten_dict(g, sep="/") for g in (g_full, g_top))
    top = {*model.module_names()[k:], "head"}
    checked = 0
    for name, g in g_full.items():
        if name.split("/")[0] in top:
            assert np.abs(g).max() > 0, name
            np.testing.assert_allclose(g_top[name], g, rtol=1e-5, atol=1e-6 * np.abs(g).max(),
                                       err_msg=name)
            checked += 1
        else:  # modules below the split do not take part in the top part
            assert not np.asarray(g_top[name]).any(), name
    assert checked > 0


def test_depthwise_backends_share_params_and_agree(tiny):
    """The fast backend's depthwise convolutions (shifted multiply-adds, the CPU default) and
    lax's (grouped nn.Conv): same parameter tree, same logits up to float rounding (1e-5 x max
    |logit|)."""
    model, variables, x = tiny
    out = {}
    for kernels in ("fast", "lax"):
        with backend.use(kernels):
            shapes = jax.tree.map(jnp.shape, jax.eval_shape(model.init, jax.random.key(0), x))
            out[kernels] = np.asarray(model.apply(variables, x, train=False))
        assert shapes == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(out["fast"], out["lax"], rtol=0,
                               atol=1e-5 * np.abs(out["lax"]).max())
