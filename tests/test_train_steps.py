"""Train/eval steps, optimizers and schedules on a tiny BN conv model."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
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


def tiny(dtype=jnp.float32):
    return models.create("cnn3", num_classes=3, filters=(4,), dropouts=(0.1,), dense=8, dtype=dtype)


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
    state = replicate(create_train_state(tiny(), tx, jax.random.key(0), (1, 8, 8, 3)), mesh)
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
    state = create_train_state(tiny(jnp.bfloat16), tx, jax.random.key(0), (1, 8, 8, 3))
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
        create_train_state(tiny(), tx, jax.random.key(0), (8, 8, 3))
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
        return replicate(create_train_state(tiny(), tx, jax.random.key(0), (1, 8, 8, 3)), mesh)

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
