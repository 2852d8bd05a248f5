"""Muon (jaxcnn.train.muon) against a float64 NumPy transcription of airbench94_muon's step, its
parameter-group wiring, and the airbench94_muon recipe end to end on tiny data."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_data import tiny_cifar

from jaxcnn import models
from jaxcnn.train import ParamGroup, fit, make_optimizer, recipes
from jaxcnn.train.muon import NS_STEPS, muon

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _newton_schulz(g, steps=NS_STEPS):
    """airbench's zeropower_via_newtonschulz5 in float64 on a (rows, cols) matrix."""
    a, b, c = NS_COEFFS
    x = g / (np.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def _reference_steps(w, grads, lr, momentum):
    """airbench94_muon's Muon.step, float64: kernels (kh, kw, C_in, C_out) are the matrices of
    their C_out filters (PyTorch's (C_out, C_in*kh*kw) view, up to the order of the columns,
    which Newton-Schulz does not mind)."""
    w = np.asarray(w, np.float64)
    buf = np.zeros_like(w)
    for g in grads:
        g = np.asarray(g, np.float64)
        buf = momentum * buf + g
        g = g + momentum * buf  # Nesterov
        w = w * np.sqrt(w.shape[-1]) / np.linalg.norm(w)
        update = _newton_schulz(g.reshape(-1, w.shape[-1]).T).T.reshape(w.shape)
        w = w - lr * update
    return w


@settings(max_examples=12, deadline=None)
@given(shape=st.sampled_from([(3, 3, 4, 64), (3, 3, 24, 16), (3, 3, 8, 8), (2, 2, 3, 24),
                              (32, 10), (5, 40)]),
       momentum=st.sampled_from([0.0, 0.6, 0.9]), seed=st.integers(0, 2**16))
def test_matches_float64_reference_over_steps(shape, momentum, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    grads = [rng.normal(size=shape).astype(np.float32) for _ in range(4)]
    tx = muon(0.05, momentum=momentum)
    params, state = {"w": jnp.asarray(w)}, tx.init({"w": jnp.asarray(w)})
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    expected = _reference_steps(w, grads, 0.05, momentum)
    # float32 Newton-Schulz against float64: 3 steps of a degree-5 polynomial
    np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=2e-4, atol=2e-5)


def test_filters_keep_norm_sqrt_cout_and_step_has_a_flat_spectrum():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 32)) * 7.0, jnp.float32)
    tx = muon(1e-6, momentum=0.0)  # a tiny step: the result is the normalised weight
    g = jnp.asarray(rng.normal(size=w.shape), jnp.float32)
    updates, _ = tx.update({"w": g}, tx.init({"w": w}), {"w": w})
    new = optax.apply_updates({"w": w}, updates)["w"]
    assert float(jnp.linalg.norm(new)) == pytest.approx(np.sqrt(32), rel=1e-5)
    # The orthogonalised step itself: singular values pulled towards 1 (3 Newton-Schulz steps
    # leave them in a band around 1, whatever the gradient's spread).
    step = np.asarray(muon(1.0, momentum=0.0, normalize=False).update(
        {"w": g}, muon(1.0, momentum=0.0, normalize=False).init({"w": w}), {"w": w})[0]["w"])
    sv = np.linalg.svd(-step.reshape(-1, 32), compute_uv=False)
    spread = np.linalg.svd(np.asarray(g).reshape(-1, 32), compute_uv=False)
    assert sv.min() > 0.5 and sv.max() < 1.3
    assert sv.max() / sv.min() < spread.max() / spread.min()


def test_biases_in_a_muon_group_are_a_clear_error():
    tx = muon(0.1)
    params = {"b": jnp.zeros((8,))}
    with pytest.raises(ValueError, match="parameter group"):
        tx.update(params, tx.init(params), params)


def test_param_groups_route_kernels_to_muon_and_the_rest_to_sgd():
    params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)) * 0.3}, "norm": {"bias": jnp.ones((8,))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    tx = make_optimizer("sgd", 0.1, schedule="constant", total_steps=10, momentum=0.0,
                        weight_decay=0.0, param_groups=(
                            ParamGroup("ndim>=2", optimizer="muon", lr_scale=0.01,
                                       momentum=0.6),))
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(new["norm"]["bias"]), 1.0 - 0.1 * 0.5, rtol=1e-6)
    kernel = np.asarray(new["conv"]["kernel"])
    expected = _reference_steps(np.asarray(params["conv"]["kernel"]),
                                [np.asarray(grads["conv"]["kernel"])], 0.1 * 0.01, 0.6)
    np.testing.assert_allclose(kernel, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer="adam"), "optimizer"),
    (dict(optimizer="muon", weight_decay=1e-4), "weight decay"),
    (dict(anneal_in_window=True), "stop_epoch"),
    (dict(momentum=1.0), "momentum"),
])
def test_bad_param_groups_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParamGroup("ndim>=2", **kwargs)


def test_anneal_in_window_runs_the_schedule_to_zero_at_the_window_end():
    """airbench94_muon's whitening bias: lr * (1 - step / stop), then 0."""
    params = {"b": jnp.zeros((1,))}
    tx = make_optimizer("sgd", 1.0, schedule="triangle", warmup_steps=0, final_lr_scale=0.0,
                        total_steps=20, momentum=0.0, weight_decay=0.0, steps_per_epoch=2,
                        param_groups=(ParamGroup("b", stop_epoch=3, anneal_in_window=True),))
    state, moves = tx.init(params), []
    for _ in range(8):
        updates, state = tx.update({"b": jnp.ones((1,))}, state, params)
        moves.append(-float(updates["b"][0]))
    np.testing.assert_allclose(moves, [1 - s / 6 for s in range(6)] + [0.0, 0.0], atol=1e-6)


def test_recipe_is_airbench94_muon_in_this_engines_units():
    config = recipes.get("airbench94_muon")
    # 9 epochs: on the 45,000 images a held-out split leaves, the record's 200 steps (8 x 25)
    assert (config.epochs, config.batch_size, config.label_smoothing) == (9, 2000, 0.2)
    assert abs(config.epochs * (45_000 // config.batch_size) - 8 * (50_000 // 2000)) <= 2
    groups = {g.match: g for g in config.param_groups}
    # airbench sums the loss over the batch: its SGD rates per summed loss are these / 2000
    assert config.lr / 2000 == pytest.approx(0.053)
    assert config.lr * groups["^head/"].lr_scale / 2000 == pytest.approx(0.67)
    assert config.lr * groups["ndim>=2"].lr_scale == pytest.approx(0.24)
    assert groups["ndim>=2"].optimizer == "muon" and groups["ndim>=2"].momentum == 0.6
    assert groups["^whiten/kernel"].lr_scale == 0
    assert groups["^whiten/bias"].stop_epoch == 3 and groups["^whiten/bias"].anneal_in_window
    assert config.lookahead_every == 0 and config.flip == "alternate"


def test_airbench94_muon_trains_end_to_end(tmp_path):
    """Tiny data and widths, batch 64: the whitening filters stay the data's, its bias stops
    after the window, every conv filter bank ends at norm sqrt(C_out), and loss falls."""
    train, evaluation = tiny_cifar(256, 0), tiny_cifar(64, 1)
    model = models.create("airbench94_muon", num_classes=10, widths=(8, 16, 16))
    config = dataclasses.replace(
        recipes.get("airbench94_muon"), epochs=4, batch_size=64, eval_every=2,
        param_groups=tuple(dataclasses.replace(g, stop_epoch=1) if g.match == "^whiten/bias"
                           else g for g in recipes.get("airbench94_muon").param_groups))
    result = fit(model, train, evaluation, config=config, workdir=tmp_path / "run",
                 progress=False, verbose=False)
    history = result.history
    assert [h["eval_accuracy"] is not None for h in history] == [False, True, False, True]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    params = result.state.params
    for block in ("block1", "block2", "block3"):
        for conv in ("conv1", "conv2"):
            kernel = np.asarray(params[block][conv]["kernel"])
            # normalised before the last step, then moved by lr_last * O (lr -> 0 at the end)
            assert np.linalg.norm(kernel) == pytest.approx(np.sqrt(kernel.shape[-1]), rel=0.02)
    assert np.isfinite(np.asarray(params["head"]["kernel"])).all()


def test_eval_every_picks_the_epochs_that_evaluate():
    from jaxcnn.train.phases import Run

    def epochs(every, total):
        run = Run(workdir=None, run_config={}, epochs=total, steps_per_epoch=1, batch_size=1,
                  schedule=lambda s: 0.0, eval_every=every)
        return [e + 1 for e in range(total) if run.evaluates_after(e)]

    assert epochs(1, 4) == [1, 2, 3, 4]
    assert epochs(3, 8) == [3, 6, 8]  # and always after the last
    assert epochs(0, 5) == []


def test_eval_every_is_checked():
    from jaxcnn.train import FitConfig

    with pytest.raises(ValueError, match="eval_every"):
        FitConfig(eval_every=-1)
