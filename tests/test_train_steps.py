"""Train/eval steps, optimizers and schedules on a tiny BN conv model."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_data import tiny_cnn3

from jaxcnn.train import (
    Preprocess,
    batch_sharding,
    create_train_state,
    cross_entropy,
    jit_eval_step,
    jit_train_step,
    learning_rate_at,
    make_eval_step,
    make_indexed_train_step,
    make_mesh,
    make_optimizer,
    make_schedule,
    make_train_step,
    replicate,
    shard_batch,
)
from jaxcnn.train.mesh import check_batch_size, jit_indexed_train_step, padded_batch_size

PP = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def batch(n=16, seed=0):
    rs = np.random.RandomState(seed)
    return rs.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8), rs.randint(0, 3, n).astype(np.int32)


def test_schedules_and_lr():
    one = make_schedule("onecycle", 0.1, total_steps=100, warmup_steps=30)
    assert learning_rate_at(one, 0) == pytest.approx(0.1 / 25)
    assert learning_rate_at(one, 30) == pytest.approx(0.1, rel=1e-4)
    assert learning_rate_at(one, 100) < 1e-5
    cos = make_schedule("cosine", 0.2, total_steps=100, warmup_steps=10)
    assert learning_rate_at(cos, 0) == 0 and learning_rate_at(cos, 10) == pytest.approx(0.2)
    assert learning_rate_at(make_schedule("constant", 0.3, total_steps=5), 4) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_schedule("linear", 0.1, total_steps=10)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule("cosine", 0.1, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        make_optimizer("adam", 0.1, total_steps=10)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_is_decoupled_and_masked(name):
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)},
        "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    }
    tx = make_optimizer(name, 0.1, schedule="constant", total_steps=10, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["conv"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)  # lr * wd * w
    for leaf in (new["conv"]["bias"], new["bn"]["scale"], new["bn"]["bias"]):
        np.testing.assert_array_equal(leaf, 1.0)


def test_cross_entropy_label_smoothing():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    logp = jax.nn.log_softmax(logits)[0]
    plain = float(cross_entropy(logits, jnp.array([0]), 3)[0])
    assert plain == pytest.approx(-float(logp[0]), rel=1e-6)
    smooth = float(cross_entropy(logits, jnp.array([0]), 3, 0.3)[0])
    target = np.array([0.8, 0.1, 0.1])
    assert smooth == pytest.approx(-float((target * logp).sum()), rel=1e-6)


def test_train_step_reduces_loss_and_eval_is_deterministic():
    mesh = make_mesh()
    tx = make_optimizer("sgd", 0.05, schedule="constant", total_steps=20)
    state = replicate(create_train_state(tiny_cnn3(), tx, jax.random.key(0), (1, 8, 8, 3)), mesh)
    step = jit_train_step(make_train_step(PP), mesh)
    images, labels = batch()
    x, y = shard_batch(mesh, images, labels)
    losses = []
    for _ in range(20):
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    assert int(state.step) == 20
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    assert 0 <= float(m["accuracy"]) <= 1

    ev = jit_eval_step(make_eval_step(PP), mesh)
    mask = np.ones(16, np.float32)
    a = ev(state, x, y, *shard_batch(mesh, mask))
    b = ev(state, x, y, *shard_batch(mesh, mask))
    np.testing.assert_array_equal(a["logits"], b["logits"])
    assert float(a["count"]) == 16 and a["logits"].shape == (16, 3)
    # Masked (padding) rows do not count.
    mask[8:] = 0
    c = ev(state, x, y, *shard_batch(mesh, mask))
    assert float(c["count"]) == 8
    per_row = cross_entropy(a["logits"], labels, 3)
    np.testing.assert_allclose(float(c["loss_sum"]), float(per_row[:8].sum()), rtol=1e-5)


def test_bf16_compute_runs_with_float32_params_and_logits():
    pp = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True, dtype="bfloat16")
    tx = make_optimizer("adamw", 1e-3, schedule="cosine", total_steps=4, weight_decay=1e-4)
    state = create_train_state(tiny_cnn3(dtype=jnp.bfloat16), tx, jax.random.key(0), (1, 8, 8, 3))
    images, labels = batch(8)
    state, m = jax.jit(make_train_step(pp, label_smoothing=0.1))(state, images, labels)
    assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    out = jax.jit(make_eval_step(pp))(state, images, labels, np.ones(8, np.float32))
    assert out["logits"].dtype == jnp.float32


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocess(mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="same length"):
        Preprocess(mean=(0.5, 0.5), std=(0.2,))
    with pytest.raises(ValueError, match="dtype"):
        Preprocess(mean=(0.5,), std=(0.2,), dtype="int8")
    tx = make_optimizer("sgd", 0.1, total_steps=10)
    with pytest.raises(ValueError, match="input_shape"):
        create_train_state(tiny_cnn3(), tx, jax.random.key(0), (8, 8, 3))
    with pytest.raises(ValueError, match="label_smoothing"):
        make_train_step(PP, label_smoothing=1.5)
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        check_batch_size(3, SimpleNamespace(size=2))  # only .size of the mesh is used


def test_indexed_step_equals_host_batches():
    """K steps gathered on the device in one scanned call == K calls on host batches."""
    mesh = make_mesh()
    tx = make_optimizer("sgd", 0.05, schedule="constant", total_steps=10)
    pp = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True)
    images, labels = batch(40, seed=1)
    idx = np.random.RandomState(2).permutation(40)[:36].reshape(3, 12).astype(np.int32)

    def fresh():
        return replicate(create_train_state(tiny_cnn3(), tx, jax.random.key(0), (1, 8, 8, 3)), mesh)

    host_step = jit_train_step(make_train_step(pp), mesh)
    state, host_losses = fresh(), []
    for rows in idx:
        state, m = host_step(state, *shard_batch(mesh, images[rows], labels[rows]))
        host_losses.append(float(m["loss"]))
    indexed = jit_indexed_train_step(
        make_indexed_train_step(make_train_step(pp), batch_sharding=batch_sharding(mesh)), mesh
    )
    data = replicate((images, labels), mesh)
    dev, m = indexed(fresh(), *data, idx)  # 3 steps in one call (lax.scan)
    assert int(dev.step) == 3 and m["loss"].shape == (3,)
    np.testing.assert_allclose(m["loss"], host_losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(dev.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_padded_batch_size_rounds_up_to_the_devices():
    eight = SimpleNamespace(size=8)  # only .size of the mesh is used
    assert padded_batch_size(500, eight) == 504
    assert padded_batch_size(512, eight) == 512
    assert padded_batch_size(500, eight, num_examples=100) == 104  # capped at the set's size
    assert padded_batch_size(3, SimpleNamespace(size=1)) == 3
    with pytest.raises(ValueError, match="positive int"):
        padded_batch_size(0, eight)


def _ce_reference(logits, labels, k, smoothing=0.0, weights=None):
    """float64 numpy: per-example smoothed cross-entropy and the (weighted) mean."""
    z = np.asarray(logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    t = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
    ce = -(t * logp).sum(-1)
    w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
    return ce, (w[labels] * ce).sum() / w[labels].sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_class_weights_match_a_float64_reference(smoothing):
    rs = np.random.RandomState(0)
    logits = (rs.randn(32, 4) * 3).astype(np.float32)
    labels = rs.randint(0, 4, 32)
    weights = np.array([0.5, 2.0, 1.0, 3.5], np.float32)
    ce, weighted = _ce_reference(logits, labels, 4, smoothing, weights)
    _, plain = _ce_reference(logits, labels, 4, smoothing)
    got = cross_entropy(logits, labels, 4, smoothing, class_weights=weights, reduction="mean")
    assert got.shape == () and float(got) == pytest.approx(weighted, rel=1e-6)
    assert float(weighted) != pytest.approx(plain, rel=1e-3)  # the weights matter here
    np.testing.assert_allclose(
        cross_entropy(logits, labels, 4, smoothing, class_weights=weights),
        weights[labels] * ce, rtol=1e-6, atol=1e-6)  # float32: ~1e-7 absolute near 0
    mean = cross_entropy(logits, labels, 4, smoothing, reduction="mean")
    assert float(mean) == pytest.approx(plain, rel=1e-6)
    np.testing.assert_array_equal(mean, cross_entropy(logits, labels, 4, smoothing).mean())
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, labels, 4, reduction="sum")


def test_train_step_class_weights_weight_the_batch_loss():
    tx = make_optimizer("sgd", 0.05, schedule="constant", total_steps=5)
    state = create_train_state(tiny_cnn3(), tx, jax.random.key(0), (1, 8, 8, 3))
    images, labels = batch()
    w = np.array([1.0, 4.0, 0.5], np.float32)
    pp = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3)
    _, m = jax.jit(make_train_step(pp, class_weights=w))(state, images, labels)
    # the step's train-mode logits, recomputed with the step's dropout key
    _, dropout_key = jax.random.split(state.step_rng())
    logits, _ = state.apply_fn(state.variables, pp.eval(images), train=True,
                               rngs={"dropout": dropout_key}, mutable=["batch_stats"])
    _, want = _ce_reference(np.asarray(logits), labels, 3, weights=w)
    assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match=r"class_weights must be \(3,\)"):
        make_train_step(pp, num_classes=3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="class_weights"):
        make_train_step(pp, class_weights=[1.0, -1.0])


def test_steps_take_ready_inputs():
    """preprocess=None: float inputs enter apply_fn as they are; the same numbers as the
    on-device normalisation of the uint8 images."""
    tx = make_optimizer("adamw", 1e-2, schedule="constant", total_steps=5)
    state = create_train_state(tiny_cnn3(), tx, jax.random.key(0), (1, 8, 8, 3))
    images, labels = batch()
    x = PP.eval(images)
    a, ma = jax.jit(make_train_step(PP))(state, images, labels)
    b, mb = jax.jit(make_train_step(None))(state, x, labels)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
    for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    mask = np.ones(16, np.float32)
    ea = jax.jit(make_eval_step(PP))(state, images, labels, mask)
    eb = jax.jit(make_eval_step(None))(state, x, labels, mask)
    np.testing.assert_allclose(ea["logits"], eb["logits"], rtol=1e-6)
    with pytest.raises(ValueError, match="Preprocess or None"):
        make_train_step("normalise")
    with pytest.raises(ValueError, match="Preprocess or None"):
        make_eval_step(object())


def test_train_bn_false_keeps_statistics_and_frozen_cuts_gradients():
    """train_bn=False: inference-mode BatchNorm (the loss is that of train=False logits) and
    bitwise unchanged running statistics; frozen leaves get no gradient (plain SGD leaves them
    bitwise unchanged) while the others move."""
    state = create_train_state(tiny_cnn3(), optax.sgd(0.1), jax.random.key(0), (1, 8, 8, 3))
    state = state.replace(batch_stats=jax.tree.map(lambda a: a + 0.3, state.batch_stats))
    images, labels = batch()
    x = PP.eval(images)
    frozen = jax.tree_util.tree_map_with_path(
        lambda path, _: path[0].key.startswith("block1"), state.params)
    step = jax.jit(make_train_step(None, train_bn=False, frozen=frozen))
    new, m = step(state, x, labels)
    logits = state.apply_fn(state.variables, x, train=False)
    assert float(m["loss"]) == pytest.approx(float(cross_entropy(logits, labels, 3).mean()),
                                             rel=1e-6)
    for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats),
                    strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for k in state.params:
        for a, b in zip(jax.tree.leaves(state.params[k]), jax.tree.leaves(new.params[k]),
                        strict=True):
            unchanged = np.asarray(a).tobytes() == np.asarray(b).tobytes()
            assert unchanged == k.startswith("block1"), k
    # train_bn=True (the default) updates the running statistics
    moved, _ = jax.jit(make_train_step(None))(state, x, labels)
    assert not np.array_equal(moved.batch_stats["block1_bn1"]["mean"],
                              state.batch_stats["block1_bn1"]["mean"])
