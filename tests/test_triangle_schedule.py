"""The triangular learning-rate schedule (airbench): against a numpy ``np.interp`` reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.train import (
    FitConfig,
    learning_rate_at,
    make_fit_optimizer,
    make_optimizer,
    make_schedule,
)


def reference(lr, total, warmup, start=0.2, end=0.07):
    steps = np.arange(total + 5, dtype=np.float64)
    if warmup:
        return np.interp(steps, [0, warmup, total], [lr * start, lr, lr * end])
    return np.interp(steps, [0, total], [lr, lr * end])


@pytest.mark.parametrize(
    "total, warmup, start, end",
    [(100, None, 0.2, 0.07), (100, 40, 0.2, 0.07), (37, 5, 0.0, 0.5), (10, 0, 0.3, 0.0)],
)
def test_triangle_matches_np_interp(total, warmup, start, end):
    sched = make_schedule("triangle", 0.4, total_steps=total, warmup_steps=warmup,
                          initial_lr_scale=start, final_lr_scale=end)
    peak = int(0.23 * total) if warmup is None else warmup  # airbench's default peak position
    want = reference(0.4, total, peak, start, end)
    got = [learning_rate_at(sched, s) for s in range(total + 5)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    # Also under jit, with the step counter as an int32 array (as optax calls it).
    jitted = jax.jit(jax.vmap(sched))(jnp.arange(total + 5, dtype=jnp.int32))
    np.testing.assert_allclose(jitted, want, rtol=1e-6, atol=1e-8)


def test_fit_config_default_warmup_is_23_percent_and_sgd_follows_it():
    cfg = FitConfig(epochs=10, batch_size=8, lr=0.5, schedule="triangle", momentum=0.0,
                    weight_decay=0.0, param_groups=())
    tx, sched = make_fit_optimizer(cfg, steps_per_epoch=10)  # 100 steps, peak at 23
    want = reference(0.5, 100, 23)
    assert learning_rate_at(sched, 23) == pytest.approx(0.5)
    assert learning_rate_at(sched, 0) == pytest.approx(0.1)
    assert learning_rate_at(sched, 100) == pytest.approx(0.035)
    # Plain SGD (no momentum, no decay): the update of step t is -lr_t * g.
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 2.0)}
    state = tx.init(params)
    for t in range(0, 30):
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["w"], -want[t] * 2.0, rtol=1e-6)
    # warmup_epochs overrides the default peak.
    _, sched = make_fit_optimizer(FitConfig(epochs=10, schedule="triangle", warmup_epochs=5,
                                            initial_lr_scale=0.0, final_lr_scale=0.0), 10)
    np.testing.assert_allclose([learning_rate_at(sched, s) for s in range(105)],
                               reference(0.05, 100, 50, 0.0, 0.0), rtol=1e-6, atol=1e-9)


def test_scales_do_not_touch_other_schedules_and_are_validated():
    for name in ("onecycle", "cosine", "constant"):
        a = make_schedule(name, 0.1, total_steps=50)
        b = make_schedule(name, 0.1, total_steps=50, initial_lr_scale=3.0, final_lr_scale=9.0)
        assert [learning_rate_at(a, s) for s in range(50)] == [
            learning_rate_at(b, s) for s in range(50)]
    with pytest.raises(ValueError, match="initial_lr_scale must be a number >= 0"):
        FitConfig(initial_lr_scale=-0.1)
    with pytest.raises(ValueError, match="final_lr_scale must be a number >= 0"):
        FitConfig(final_lr_scale="0.1")
    with pytest.raises(ValueError, match="final_lr_scale must be a number >= 0"):
        make_schedule("triangle", 0.1, total_steps=10, final_lr_scale=-1)
    with pytest.raises(ValueError, match="initial_lr_scale"):
        make_optimizer("sgd", 0.1, schedule="triangle", total_steps=10, initial_lr_scale=-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule("triangle", 0.1, total_steps=10, warmup_steps=10)
    assert isinstance(make_optimizer("sgd", 0.1, schedule="triangle", total_steps=10),
                      optax.GradientTransformation)
