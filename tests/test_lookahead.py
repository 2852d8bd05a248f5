"""Lookahead (airbench's slow weights in the optimizer state): a numpy reference on a toy
quadratic, frozen groups bitwise unchanged, composition with the EMA, and a resumed run equal
to an uninterrupted one with all the speedrun options on."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_data import random_dataset, tiny_cnn3

from jaxcnn.train import (
    FitConfig,
    ParamGroup,
    TrainState,
    checkpoint,
    ema_params,
    fit,
    lookahead_params,
    make_optimizer,
    with_lookahead,
)


def bits(tree):
    return [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]


C = np.array([0.5, 1.0, 2.0, 3.0])  # curvatures of f(p) = 0.5 * sum(c * (p - target)^2)
TARGET = np.array([1.0, -2.0, 0.5, 4.0])


def grad(p):
    return C * (p - TARGET)


def numpy_lookahead(p0, lr, every, decay, total, steps):
    """Plain SGD with lookahead, in float64: the trajectory of the params and the slow ones."""
    p, slow, out = np.array(p0, np.float64), np.array(p0, np.float64), []
    for t in range(1, steps + 1):
        p = p - lr * grad(p)
        if t % every == 0 or t == total:
            d = decay**every * (t / total) ** 3
            slow = d * slow + (1 - d) * p
            p = slow.copy()
        out.append((p.copy(), slow.copy()))
    return out


def state_of(params, tx):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                      opt_state=tx.init(params), rng=jax.random.key(0), apply_fn=None, tx=tx)


def test_lookahead_matches_numpy_on_a_quadratic():
    lr, every, decay, total = 0.1, 5, 0.9, 12  # syncs after updates 5, 10 and 12 (the last)
    p0 = np.array([3.0, 1.0, -1.0, 0.0], np.float32)
    tx = make_optimizer("sgd", lr, schedule="constant", total_steps=total, momentum=0.0,
                        weight_decay=0.0, param_groups=(), lookahead_every=every,
                        lookahead_decay=decay)
    state = state_of({"w": jnp.asarray(p0)}, tx)
    step = jax.jit(lambda s: s.apply_gradients({"w": s.params["w"] * C - C * TARGET}))
    want = numpy_lookahead(p0, lr, every, decay, total, total)
    for t in range(1, total + 1):
        state = step(state)
        p, slow = want[t - 1]
        np.testing.assert_allclose(state.params["w"], p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lookahead_params(state)["w"], slow, rtol=1e-5, atol=1e-6)
        if t in (5, 10, 12):  # the fast weights restart exactly from the slow ones
            assert bits(state.params) == bits(lookahead_params(state))
        else:
            assert bits(state.params) != bits(lookahead_params(state))
    # The cubic ramp: the sync at t keeps d_t = decay**every * (t / total)**3 of the slow weights;
    # a plain SGD run without lookahead differs.
    plain = make_optimizer("sgd", lr, schedule="constant", total_steps=total, momentum=0.0,
                           weight_decay=0.0, param_groups=())
    ref = state_of({"w": jnp.asarray(p0)}, plain)
    for _ in range(total):
        ref = step(ref)
    assert not np.allclose(ref.params["w"], state.params["w"])
    assert lookahead_params(ref) is None


def test_frozen_group_stays_bitwise_and_ema_composes():
    rs = np.random.RandomState(0)
    params = {"body": {"kernel": jnp.asarray(rs.randn(3, 4), jnp.float32)},
              "head": {"kernel": jnp.asarray(rs.randn(4, 2), jnp.float32),
                       "bias": jnp.asarray(rs.randn(2), jnp.float32)}}
    groups = (ParamGroup("^head/", lr_scale=0.0),)
    tx = make_optimizer("sgd", 0.05, schedule="triangle", total_steps=9, weight_decay=1e-2,
                        param_groups=groups, lookahead_every=2, lookahead_decay=0.8,
                        ema_decay=0.7)
    state = state_of(params, tx)
    trajectory = [state.params]
    for _ in range(9):
        g = jax.tree.map(lambda p: jnp.asarray(rs.randn(*p.shape), jnp.float32), params)
        state = state.apply_gradients(g)
        trajectory.append(state.params)
    assert bits(state.params["head"]) == bits(params["head"])
    assert bits(lookahead_params(state)["head"]) == bits(params["head"])
    assert bits(state.params["body"]) != bits(params["body"])
    # The EMA (outermost) averages the params as stored, resets included.
    ema = np.asarray(trajectory[0]["body"]["kernel"], np.float64)
    for p in trajectory[1:]:
        ema = 0.7 * ema + 0.3 * np.asarray(p["body"]["kernel"], np.float64)
    np.testing.assert_allclose(ema_params(state)["body"]["kernel"], ema, rtol=1e-5, atol=1e-6)
    assert bits(state.params) == bits(lookahead_params(state))  # 9 = the last step: a sync


def test_bad_lookahead_settings_are_clear_errors():
    with pytest.raises(ValueError, match="lookahead_every must be an int >= 0"):
        FitConfig(lookahead_every=-1)
    with pytest.raises(ValueError, match="lookahead_every must be an int >= 0"):
        FitConfig(lookahead_every=2.5)
    with pytest.raises(ValueError, match=r"lookahead_decay must be a number in \[0, 1\]"):
        FitConfig(lookahead_decay=1.5)
    with pytest.raises(ValueError, match="lookahead_decay"):
        make_optimizer("sgd", 0.1, total_steps=10, lookahead_every=5, lookahead_decay=-0.1)
    with pytest.raises(ValueError, match="positive int"):
        with_lookahead(make_optimizer("sgd", 0.1, total_steps=10), 0, 0.9, 10)


def test_resume_with_speedrun_options_equals_uninterrupted(tmp_path):
    """Triangle schedule, lookahead (a sync inside epoch 2, after the resume), EMA and
    alternating flips: a run stopped after epoch 1 and resumed ends bitwise like one run."""
    train, evals = random_dataset(32, 0), random_dataset(8, 1)
    model = tiny_cnn3()
    cfg = FitConfig(epochs=3, batch_size=16, eval_batch_size=8, lr=0.05, log_every=2,
                    data_on_device=False, schedule="triangle", lookahead_every=3,
                    ema_decay=0.9, flip="alternate", crop_pad=2)  # 6 steps: syncs at 3 and 6
    kw = dict(progress=False, verbose=False)
    full = fit(model, train, evals, config=cfg, workdir=tmp_path / "full", **kw)
    fit(model, train, evals, config=cfg, workdir=tmp_path / "split", stop_after_epoch=1, **kw)
    _, meta = checkpoint.restore(tmp_path / "split", "latest")
    assert meta["config"]["flip"] == "alternate" and meta["config"]["lookahead_every"] == 3
    resumed = fit(model, train, evals, config=cfg, workdir=tmp_path / "split", **kw)
    assert bits(resumed.state.params) == bits(full.state.params)
    assert bits(resumed.state.opt_state) == bits(full.state.opt_state)
    assert bits(lookahead_params(full.state)) == bits(full.state.params)  # the last sync
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in full.history]
    with pytest.raises(ValueError, match="lookahead_every: saved 3 vs now 0"):
        fit(model, train, evals, config=dataclasses.replace(cfg, lookahead_every=0),
            workdir=tmp_path / "split", **kw)


def test_checkpoints_from_before_the_new_fields_still_resume():
    from jaxcnn.train.runconfig import check_fit_resume as _check_resume_config

    current = json.loads(json.dumps(FitConfig().to_dict()))
    old = {k: v for k, v in current.items() if k not in FitConfig.LATER_FIELDS}
    _check_resume_config(old, current, "w")  # made with the defaults: resumes
    on = json.loads(json.dumps(FitConfig(lookahead_every=5).to_dict()))
    with pytest.raises(ValueError, match="lookahead_every: saved 0 vs now 5"):
        _check_resume_config(old, on, "w")
