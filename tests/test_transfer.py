"""Transfer learning: feature cache, head training, freezing really freezes, BN stays frozen."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import evaluate, transfer


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
    state = transfer.fine_tune_state(model, variables, tx, dropout=0.2)
    step = jax.jit(transfer.make_fine_tune_step(labels, 3, freeze_bn=freeze_bn))
    x, y = _data()
    for _ in range(4):
        state, m = step(state, x, y)
        assert np.isfinite(float(m["loss"]))
    p, s = state.params, state.batch_stats
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


# --------------------------------------------------------------------------------------------
# fine_tune with cached activations (EfficientNet-Lite's split forward)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite():
    """A tiny EfficientNet-Lite (stem, block0..block3, head_conv) at 32 px with a trained-ish
    head, non-trivial BN statistics, and a small uint8 train/val split."""
    from jaxcnn.data import ArrayDataset
    from jaxcnn.models.efficientnet_lite import EfficientNetLite

    model = EfficientNetLite(num_classes=3, stages=((1, 3, 1, 8, 1), (6, 3, 2, 16, 2),
                                                    (6, 5, 2, 24, 1)),
                             stem_features=8, head_features=32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # jit returns dicts with sorted keys; top_blocks reads the network order from the params
    order = [*model.module_names(), "head"]
    variables = {c: {k: t[k] for k in order if k in t} for c, t in variables.items()}
    variables["batch_stats"] = jax.tree.map(lambda a: a + 0.2, variables["batch_stats"])
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 32).astype(np.int32)
    names = ("a", "b", "c")
    train = ArrayDataset(images[:24], labels[:24], names)
    val = ArrayDataset(images[24:], labels[24:], names)
    prep = transfer.image_preprocess((32, 32), (0.5,) * 3, (0.5,) * 3)
    return model, variables, train, val, prep


def _fine_tune(lite, **kw):
    model, variables, train, val, prep = lite
    trainable = transfer.top_blocks(variables["params"], 2)  # block3, head_conv (+ head)
    kw = dict(dict(epochs=2, batch_size=8, lr=1e-2, eval_batch_size=8, progress=False), **kw)
    return transfer.fine_tune(model, variables, train, val, prep, trainable=trainable, **kw)


def test_split_point(tiny, lite):
    model, variables = lite[:2]
    params = variables["params"]
    assert transfer.split_point(model, params, transfer.top_blocks(params, 2)) == 4
    assert transfer.split_point(model, params, ("head",)) == 5  # head only: head_conv's input
    assert transfer.split_point(model, params, lambda p: p[0] == "block1") == 2
    assert transfer.split_point(model, params, transfer.top_blocks(params, 6)) is None  # stem
    assert transfer.split_point(tiny[0], tiny[1]["params"], ("head",)) is None  # no split API
    # params that went through jit / jax.tree (e.g. pretrained.load) have sorted keys: the
    # network order then comes from the model
    shuffled = dict(sorted(params.items()))
    assert transfer.top_blocks(shuffled, 2) == ("head_conv", "stem", "head")  # wrong without it
    assert transfer.top_blocks(shuffled, 2, model=model) == ("block3", "head_conv", "head")
    with pytest.raises(ValueError, match="params hold modules"):
        transfer.top_blocks({"head": 0, "stem": 0}, 1, model=model)


def test_extract_activations_match_the_split_forward(lite, tmp_path):
    model, variables, train, _, prep = lite
    a = transfer.extract_activations(model, variables, train.images, prep, 4, batch_size=5,
                                     cache_dir=tmp_path, progress=False)
    want = model.apply(variables, prep(train.images), method=model.stem_and_blocks, upto=4)
    assert a.shape == (24, 8, 8, 16) and a.dtype == np.float32
    np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-6)
    flipped = transfer.extract_activations(model, variables, train.images, prep, 4,
                                           batch_size=5, flip=True, cache_dir=tmp_path,
                                           progress=False)
    want = model.apply(variables, prep(train.images[:, :, ::-1]), method=model.stem_and_blocks,
                       upto=4)
    np.testing.assert_allclose(flipped, want, rtol=1e-6, atol=1e-6)
    assert len(list(tmp_path.glob("activations-*.npz"))) == 2
    # a new head / new top blocks keep the key (only the modules below the split enter it)
    new_top = transfer.with_head(variables, {"kernel": jnp.ones((32, 3)), "bias": jnp.ones(3)})
    transfer.extract_activations(model, new_top, train.images, prep, 4, batch_size=5,
                                 cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("activations-*.npz"))) == 2


@pytest.mark.parametrize("flip", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_cached_fine_tune_equals_full_forward(lite, tmp_path, flip):
    """Same seed, batches, flips and dropout keys: the cached path (top part only) ends with the
    params of the full-forward path (rtol 1e-5, atol 1e-6; bitwise equal on the CPU where it was
    written), and the frozen modules and BN statistics are bitwise unchanged by both."""
    model, variables = lite[:2]
    full, hist_full = _fine_tune(lite, flip=flip, cache_activations=False)
    cached, hist_cached = _fine_tune(lite, flip=flip, cache_dir=tmp_path)
    files = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.npz"))
    assert files == (["activations-train", "activations-train-flipped", "activations-val"]
                     if flip else ["activations-train", "activations-val"])
    before, a, b = _flat(variables["params"]), _flat(full["params"]), _flat(cached["params"])
    changed = 0
    for k in before:
        if k.split("/")[0] in ("stem", "block0", "block1", "block2"):
            assert before[k].tobytes() == a[k].tobytes() == b[k].tobytes(), k
        else:
            changed += not np.allclose(before[k], b[k], rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert changed >= 10, "fine-tuning moved too few trainable leaves"
    for s0, s1 in zip(jax.tree.leaves(variables["batch_stats"]),
                      jax.tree.leaves(cached["batch_stats"]), strict=True):
        assert np.asarray(s0).tobytes() == np.asarray(s1).tobytes()
    for r1, r2 in zip(hist_full, hist_cached, strict=True):
        assert r1["eval_accuracy"] == r2["eval_accuracy"]
        np.testing.assert_allclose([r2["train_loss"], r2["eval_loss"]],
                                   [r1["train_loss"], r1["eval_loss"]], rtol=1e-5)


def test_cached_fine_tune_reuses_its_cache_and_falls_back(lite, tmp_path, monkeypatch):
    first, _ = _fine_tune(lite, epochs=1, cache_dir=tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")}
    assert len(stamps) == 3
    passes = []
    run = evaluate.run_batched

    def spy(forward, variables, inputs, batch_size):
        passes.append(inputs.dtype.name)  # uint8: images (a full forward); float32: cached
        return run(forward, variables, inputs, batch_size)

    monkeypatch.setattr(evaluate, "run_batched", spy)
    again, _ = _fine_tune(lite, epochs=1, cache_dir=tmp_path)
    assert passes == ["float32"]  # the epoch's evaluation only: no extraction pass
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*.npz")} == stamps
    jax.tree.map(np.testing.assert_array_equal, first, again)
    # batch statistics updated (freeze_bn=False) need the full forward: nothing is cached
    passes.clear()
    _fine_tune(lite, epochs=1, freeze_bn=False, cache_dir=tmp_path / "bn")
    assert passes == ["uint8"] and not (tmp_path / "bn").exists()
    model, variables = lite[:2]
    labels = transfer.freeze_labels(variables["params"], ("head",))
    state = transfer.fine_tune_state(model, variables, optax.sgd(0.1), start=4)
    step = transfer.make_fine_tune_step(labels, 3, freeze_bn=False)
    with pytest.raises(ValueError, match="needs BatchNorm in inference mode"):
        step(state, jnp.zeros((2, 8, 8, 16)), jnp.zeros(2, jnp.int32))


def test_backbone_preprocess_uses_the_pretrained_spec():
    from jaxcnn.pretrained import PRETRAINED

    prep = transfer.backbone_preprocess("efficientnet_lite0", (8, 8))
    spec = PRETRAINED["efficientnet_lite0"].preprocessing
    assert prep.input_size == (8, 8) and prep.mean == spec.mean and prep.std == spec.std
    x = np.full((1, 8, 8, 3), 255, np.uint8)
    np.testing.assert_allclose(prep(x), 1.0)  # [-1, 1] scaling: white -> 1
    with pytest.raises(ValueError, match="BGR"):
        transfer.backbone_preprocess("resnet50", (8, 8))
    with pytest.raises(ValueError, match="unknown pretrained"):
        transfer.backbone_preprocess("nope", (8, 8))


# --------------------------------------------------------------------------------------------
# One engine: fit's history keys, make_optimizer's weight-decay mask, cache invalidation
# --------------------------------------------------------------------------------------------

FIT_KEYS = {"epoch", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr",
            "images_per_s", "epoch_seconds", "compile_seconds"}


def test_histories_have_fits_keys(lite):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    _, hist = transfer.train_head(x, y, 3, val=(x[:8], y[:8]), epochs=3, batch_size=16,
                                  progress=False)
    assert [r["epoch"] for r in hist] == [1, 2, 3] and all(set(r) == FIT_KEYS for r in hist)
    assert all(r["images_per_s"] > 0 and r["epoch_seconds"] > 0 for r in hist)
    assert hist[0]["compile_seconds"] >= 0 and hist[-1]["compile_seconds"] == 0.0
    # fit's convention: the learning rate of the epoch's last step (cosine, 6 steps, no warm-up)
    assert hist[-1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 5 / 6)), rel=1e-5)
    _, hist = transfer.train_head(x, y, 3, epochs=1, progress=False)  # no val: None
    assert set(hist[0]) == FIT_KEYS and hist[0]["eval_loss"] is None
    _, hist = _fine_tune(lite, epochs=1)
    assert set(hist[0]) == FIT_KEYS and hist[0]["eval_accuracy"] is not None


def test_head_bias_gets_no_weight_decay():
    """With zero features the logits are the bias alone, so the kernel cannot affect the
    bias's trajectory: with and without weight decay the bias ends bitwise equal (no decay on
    biases, as in fit), while the kernel (zero gradient) decays only with it."""
    x = np.zeros((16, 4), np.float32)
    y = np.random.default_rng(6).integers(0, 3, 16).astype(np.int32)
    head = {"kernel": np.ones((4, 3), np.float32), "bias": np.array([0.5, -0.2, 0.1], np.float32)}
    out = {wd: transfer.train_head(x, y, 3, head=head, epochs=3, batch_size=8, lr=0.1,
                                   weight_decay=wd, progress=False)[0] for wd in (0.0, 0.5)}
    assert out[0.0]["bias"].tobytes() == out[0.5]["bias"].tobytes()
    assert not np.array_equal(out[0.0]["bias"], head["bias"])  # the bias did train
    np.testing.assert_array_equal(out[0.0]["kernel"], head["kernel"])
    assert np.all(out[0.5]["kernel"] < 1.0)


def test_fine_tune_optimizer_decays_trainable_kernels_only(lite):
    """transfer_optimizer (fine_tune's): with zero gradients, the kernels of the trainable
    modules decay; their biases and BatchNorm scale/bias and every frozen leaf stay bitwise."""
    params = lite[1]["params"]
    labels = transfer.freeze_labels(params, transfer.top_blocks(params, 1))  # head_conv, head
    tx = transfer.transfer_optimizer(0.1, total_steps=4, weight_decay=0.5, labels=labels)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new = optax.apply_updates(params, tx.update(zeros, tx.init(params), params)[0])
    before, after = _flat(params), _flat(new)
    decayed = set()
    for k in before:
        if before[k].tobytes() != after[k].tobytes():
            decayed.add(k)
    assert decayed == {k for k in before
                       if k.split("/")[0] in ("head_conv", "head") and before[k].ndim >= 2}
    assert any(k.startswith("head_conv/") and k.endswith("scale") for k in before)  # BN there
    assert {"head/kernel", "head_conv/conv/kernel"} <= decayed


def test_feature_cache_is_invalidated_by_model_variables_and_preprocess(tiny, tmp_path):
    model, variables = tiny
    images = np.random.default_rng(5).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    prep = transfer.image_preprocess((8, 8), (0.5,) * 3, (0.5,) * 3)

    def extract(m=model, v=variables, p=prep):
        transfer.extract_features(m, v, images, p, batch_size=4, cache_dir=tmp_path,
                                  name="t", progress=False)
        return len(list(tmp_path.glob("t-*.npz")))

    assert extract() == 1 and extract() == 1  # the same inputs hit the cache
    v2 = jax.tree.map(lambda a: a, variables)
    v2["params"]["stem"]["conv"]["kernel"] = v2["params"]["stem"]["conv"]["kernel"] + 1e-3
    assert extract(v=v2) == 2
    assert extract(p=transfer.image_preprocess((8, 8), (0.4,) * 3, (0.5,) * 3)) == 3
    assert extract(m=Tiny(num_classes=4)) == 4
