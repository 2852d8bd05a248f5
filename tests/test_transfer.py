"""Transfer learning: feature cache, head training, freezing really freezes, BN stays frozen."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import transfer


class Tiny(nn.Module):
    """stem -> block0 -> block1 (conv + BN) -> mean pool -> head, registry-style."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        for name, feats in (("stem", 4), ("block0", 6), ("block1", 8)):
            x = _ConvBN(feats, name=name)(x, train)
        x = x.mean(axis=(1, 2))
        if return_features:
            return x
        return nn.Dense(self.num_classes, name="head")(x)


class _ConvBN(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(self.features, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        return nn.relu(x)


@pytest.fixture(scope="module")
def tiny():
    model = Tiny()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    # non-trivial running statistics, so "unchanged" is a real check
    variables = dict(variables)
    variables["batch_stats"] = jax.tree.map(lambda a: a + 0.25, variables["batch_stats"])
    return model, variables


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    return x, y


def _flat(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freezing_really_freezes(tiny, freeze_bn):
    model, variables = tiny
    params, stats = variables["params"], variables["batch_stats"]
    trainable = transfer.top_blocks(params, 1)
    assert trainable == ("block1", "head")
    labels = transfer.freeze_labels(params, trainable)
    tx = transfer.make_freezing_optimizer(optax.adamw(1e-2, weight_decay=0.1), labels)
    step = transfer.make_fine_tune_step(model, tx, labels, 3, freeze_bn=freeze_bn, dropout=0.2)
    opt_state = tx.init(params)
    p, s = params, stats
    x, y = _data()
    for i in range(4):
        p, s, opt_state, loss, acc = step(p, s, opt_state, jax.random.key(i), x, y)
        assert np.isfinite(float(loss))
    before, after = _flat(params), _flat(p)
    for k in before:
        frozen = k.split("/")[0] in ("stem", "block0")
        same = np.array_equal(before[k], after[k])
        assert same == frozen, f"{k}: frozen={frozen} but unchanged={same}"
        if frozen:  # bitwise, dtype included
            assert before[k].dtype == after[k].dtype and before[k].tobytes() == after[k].tobytes()
    s_before, s_after = _flat(stats), _flat(s)
    for k in s_before:
        if freeze_bn:
            assert s_before[k].tobytes() == s_after[k].tobytes(), k
        else:  # batch statistics are used and the running averages move
            assert not np.array_equal(s_before[k], s_after[k]), k


def test_head_only_and_predicate_labels(tiny):
    _, variables = tiny
    params = variables["params"]
    assert transfer.top_blocks(params, 0) == ("head",)
    assert transfer.top_blocks(params, 3) == ("stem", "block0", "block1", "head")
    with pytest.raises(ValueError, match="in \\[0, 3\\]"):
        transfer.top_blocks(params, 4)
    labels = transfer.freeze_labels(params, lambda path: path[0] == "head")
    flat = _flat(labels)
    assert {v for k, v in flat.items() if k.startswith("head")} == {"trainable"}
    assert {v for k, v in flat.items() if not k.startswith("head")} == {"frozen"}
    with pytest.raises(ValueError, match="not in the params"):
        transfer.freeze_labels(params, ["nope"])


def test_extract_features_cached_and_inference_mode(tiny, tmp_path):
    model, variables = tiny
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    prep = transfer.image_preprocess((8, 8), (0.5,) * 3, (0.5,) * 3)
    f = transfer.extract_features(model, variables, images, prep, batch_size=4,
                                  cache_dir=tmp_path, name="tiny", progress=False)
    assert f.shape == (10, 8) and f.dtype == np.float32
    ref = model.apply(variables, prep(images), train=False, return_features=True)
    np.testing.assert_allclose(f, np.asarray(ref), rtol=1e-5, atol=1e-6)
    files = list(tmp_path.glob("tiny-*.npz"))
    assert len(files) == 1
    # the cache is read back (poison it to prove it) and keyed by the data
    np.savez(files[0], features=np.zeros_like(f))
    again = transfer.extract_features(model, variables, images, prep, batch_size=4,
                                      cache_dir=tmp_path, name="tiny", progress=False)
    assert not again.any()
    transfer.extract_features(model, variables, images[:5], prep, batch_size=4,
                              cache_dir=tmp_path, name="tiny", progress=False)
    assert len(list(tmp_path.glob("tiny-*.npz"))) == 2


def test_train_head_learns_separable_features_and_with_head(tiny):
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(3, 8)) * 6
    y = rng.integers(0, 3, 300).astype(np.int32)
    x = (centers[y] + rng.normal(size=(300, 8))).astype(np.float32)
    head, hist = transfer.train_head(x[:240], y[:240], 3, val=(x[240:], y[240:]), epochs=30,
                                     lr=1e-2, progress=False,
                                     class_weights=np.ones(3, np.float32))
    assert hist[-1]["eval_accuracy"] > 0.9 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert {"epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr"} <= \
        set(hist[-1])
    model, variables = tiny
    v = transfer.with_head(variables, head)
    assert v["params"]["block1"] is variables["params"]["block1"]
    feats = model.apply(v, jnp.asarray(_data()[0]), train=False, return_features=True)
    np.testing.assert_allclose(
        model.apply(v, jnp.asarray(_data()[0]), train=False),
        transfer.head_logits(head, feats), rtol=1e-5, atol=1e-5)
