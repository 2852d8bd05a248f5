"""The engine (docs/design.md, "One engine"): parameter groups, EMA, freezing on a schedule, the
data-dependent init hook, recipes and overrides, one-step runs, and compiled programs reused by
a second build with the same configuration."""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_data import random_dataset, tiny_cnn3

from jaxcnn.data import ArrayDataset
from jaxcnn.train import (
    DEFAULT_PARAM_GROUPS,
    FitConfig,
    ParamGroup,
    TrainState,
    build,
    checkpoint,
    ema_params,
    evaluate_dataset,
    fit,
    make_feed,
    make_optimizer,
    make_schedule,
    recipes,
    with_ema_params,
)

TRAIN, EVAL = random_dataset(32, 0), random_dataset(12, 1)
CFG = FitConfig(epochs=2, batch_size=16, eval_batch_size=12, lr=0.05, log_every=2,
                data_on_device=False)


def bits(tree):
    return [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]


def tree_params():
    rs = np.random.RandomState(0)
    shapes = {"conv": {"kernel": (3, 3, 1, 2), "bias": (2,)}, "dense": {"kernel": (4, 2)},
              "head": {"kernel": (2, 3), "bias": (3,)}}
    return jax.tree.map(lambda s: jnp.asarray(rs.randn(*s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


# ------------------------------------------------------------------------ (a) parameter groups


def test_groups_freeze_bitwise_and_decay_as_specified():
    params = tree_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    lr, m, wd = 0.1, 0.9, 0.01
    groups = (
        ParamGroup("^head/", lr_scale=0.0),  # frozen
        ParamGroup("conv/kernel", lr_scale=0.5, weight_decay=0.2),
        *DEFAULT_PARAM_GROUPS,  # conv/bias: no decay
    )  # dense/kernel matches no rule: lr and the optimizer's weight decay
    tx = make_optimizer("sgd", lr, schedule="constant", total_steps=10, momentum=m,
                        weight_decay=wd, param_groups=groups)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert bits(new["head"]) == bits(params["head"])
    g = np.float32(0.3)
    nesterov = g + m * g  # first step: trace = g, Nesterov update g + m * trace

    def expect(w, scale, decay):
        w = np.asarray(w)
        return w - lr * scale * (nesterov + decay * w)

    np.testing.assert_allclose(new["conv"]["kernel"], expect(params["conv"]["kernel"], 0.5, 0.2),
                               rtol=1e-6)
    np.testing.assert_allclose(new["conv"]["bias"], expect(params["conv"]["bias"], 1.0, 0.0),
                               rtol=1e-6)
    np.testing.assert_allclose(new["dense"]["kernel"],
                               expect(params["dense"]["kernel"], 1.0, wd), rtol=1e-6)
    # Many steps later the frozen group is still bitwise the same (no state, no drift).
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                       opt_state=tx.init(params), rng=jax.random.key(0), apply_fn=None, tx=tx)
    for _ in range(5):
        state = state.apply_gradients(grads)
    assert bits(state.params["head"]) == bits(params["head"])


def test_default_rule_is_no_decay_for_biases_and_batchnorm():
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)},
              "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    for groups, decayed in ((DEFAULT_PARAM_GROUPS, False), ((), True)):
        tx = make_optimizer("adamw", 0.1, schedule="constant", total_steps=10, weight_decay=0.5,
                            param_groups=groups)
        new = optax.apply_updates(params, tx.update(zeros, tx.init(params), params)[0])
        np.testing.assert_allclose(new["conv"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)
        for leaf in (new["conv"]["bias"], new["bn"]["scale"], new["bn"]["bias"]):
            assert np.allclose(leaf, 0.95) if decayed else np.all(np.asarray(leaf) == 1.0)


def test_bad_groups_are_clear_errors():
    with pytest.raises(ValueError, match="regular expression"):
        ParamGroup("conv[")
    with pytest.raises(ValueError, match="lr_scale"):
        ParamGroup("x", lr_scale=-1)
    with pytest.raises(ValueError, match="stop_epoch"):
        ParamGroup("x", start_epoch=2, stop_epoch=1)
    with pytest.raises(ValueError, match="param_groups"):
        FitConfig(param_groups=("ndim<2",))
    with pytest.raises(ValueError, match="eval_ema needs ema_decay"):
        FitConfig(eval_ema=True)


# ----------------------------------------------------------------------------------- (b) EMA


def test_ema_is_the_closed_form_average_of_the_trajectory():
    params = tree_params()
    decay = 0.8
    tx = make_optimizer("sgd", 0.1, schedule="constant", total_steps=10, weight_decay=1e-2,
                        ema_decay=decay)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                       opt_state=tx.init(params), rng=jax.random.key(0), apply_fn=None, tx=tx)
    rs = np.random.RandomState(1)
    trajectory = [params]
    for _ in range(4):
        grads = jax.tree.map(lambda p: jnp.asarray(rs.randn(*p.shape), jnp.float32), params)
        state = state.apply_gradients(grads)
        trajectory.append(state.params)
    t = len(trajectory) - 1
    weights = [decay**t] + [(1 - decay) * decay ** (t - s) for s in range(1, t + 1)]
    want = jax.tree.map(lambda *ps: sum(w * np.asarray(p, np.float64)
                                        for w, p in zip(weights, ps, strict=True)), *trajectory)
    for a, b in zip(jax.tree.leaves(ema_params(state)), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ema_params(state)["conv"]["kernel"], state.params["conv"]["kernel"])


def test_one_step_onecycle_run_with_ema_evaluation(tmp_path):
    """A run of exactly one optimizer step with the one-cycle schedule's default warm-up (it
    used to fail: warmup_steps 1 not in [0, 1)); evaluation on the EMA weights."""
    schedule = make_schedule("onecycle", 0.1, total_steps=1)
    assert 0 < float(schedule(0)) <= 0.1
    cfg = dataclasses.replace(CFG, epochs=1, schedule="onecycle", ema_decay=0.5, eval_ema=True)
    one_batch = ArrayDataset(TRAIN.images[:16], TRAIN.labels[:16], TRAIN.class_names)
    result = fit(tiny_cnn3(), one_batch, EVAL, config=cfg, workdir=tmp_path, progress=False,
                 verbose=False)
    assert int(result.state.step) == 1 and len(result.history) == 1
    ev = evaluate_dataset(with_ema_params(result.state), EVAL, result.preprocess, batch_size=12)
    assert result.history[0]["eval_loss"] == pytest.approx(ev["loss"], rel=1e-6)
    live = evaluate_dataset(result.state, EVAL, result.preprocess, batch_size=12)
    assert live["loss"] != pytest.approx(ev["loss"], rel=1e-6)


# --------------------------------------------------------------------- (c) freezing on a schedule


def test_group_trains_only_inside_its_window():
    params = tree_params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    groups = (ParamGroup("conv/bias", stop_epoch=1.5), ParamGroup("^head/", start_epoch=1),
              *DEFAULT_PARAM_GROUPS)
    tx = make_optimizer("sgd", 0.1, schedule="constant", total_steps=10, param_groups=groups,
                        steps_per_epoch=2)  # conv/bias: steps 0-2; head: from step 2
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                       opt_state=tx.init(params), rng=jax.random.key(0), apply_fn=None, tx=tx)
    changed = {"bias": [], "head": [], "kernel": []}
    for _ in range(6):
        new = state.apply_gradients(grads)
        for name, a, b in (("bias", state.params["conv"]["bias"], new.params["conv"]["bias"]),
                           ("head", state.params["head"], new.params["head"]),
                           ("kernel", state.params["conv"]["kernel"],
                            new.params["conv"]["kernel"])):
            changed[name].append(bits(a) != bits(b))
        state = new
    assert changed["bias"] == [True, True, True, False, False, False]  # frozen after step 3
    assert changed["head"] == [False, False, True, True, True, True]
    assert all(changed["kernel"])


# ----------------------------------------------------------------- (d) data-dependent init hook

HOOK_CALLS = []


def scale_first_conv(variables, images, rng):
    """A data-dependent init: the first conv kernel scaled by 64 / std of the images, plus a
    little noise from ``rng``."""
    HOOK_CALLS.append(images.shape)
    params = jax.tree.map(lambda a: a, variables["params"])
    kernel = params["block1_conv1"]["kernel"]
    noise = 0.01 * jax.random.normal(rng, kernel.shape)
    params["block1_conv1"]["kernel"] = kernel * (64.0 / float(np.std(images))) + noise
    return {**variables, "params": params}


def test_init_hook_output_is_the_start_and_in_the_checkpoint(tmp_path):
    cfg = dataclasses.replace(CFG, init_fn=scale_first_conv, ema_decay=0.9)
    model = tiny_cnn3()
    plain = build(model, dataclasses.replace(cfg, init_fn=None), TRAIN)
    HOOK_CALLS.clear()
    engine = build(model, cfg, TRAIN)
    assert HOOK_CALLS == [TRAIN.images.shape]
    want = scale_first_conv(jax.device_get(plain.state.variables), TRAIN.images,
                            jax.random.fold_in(jax.random.key(cfg.seed), 0x1217))
    assert bits(engine.state.params) == bits(jax.tree.map(jnp.float32, want["params"]))
    assert bits(ema_params(engine.state)) == bits(engine.state.params)  # opt state re-made
    # Training starts from it: one epoch by hand equals the run's first checkpoint.
    feed = make_feed(engine, TRAIN)
    state = engine.state
    for new_state, _, _ in feed.epoch(state, 0):
        state = new_state
    HOOK_CALLS.clear()
    full = fit(model, TRAIN, EVAL, config=cfg, workdir=tmp_path / "full", progress=False,
               verbose=False)
    assert len(HOOK_CALLS) == 1
    tree, meta = checkpoint.restore(tmp_path / "full", "latest")
    assert meta["config"]["init_fn"].endswith("test_engine.scale_first_conv")
    # Resume: the hook is not run again, and the result is bitwise the uninterrupted run.
    HOOK_CALLS.clear()
    part = fit(model, TRAIN, EVAL, config=cfg, workdir=tmp_path / "split", progress=False,
               verbose=False, stop_after_epoch=1)
    epoch1, _ = checkpoint.restore(tmp_path / "split", "latest")
    assert bits(epoch1["params"]) == bits(state.params)
    assert bits(part.state.params) == bits(state.params)
    resumed = fit(model, TRAIN, EVAL, config=cfg, workdir=tmp_path / "split", progress=False,
                  verbose=False)
    assert len(HOOK_CALLS) == 1  # the first call only
    assert bits(resumed.state.params) == bits(full.state.params)
    assert bits(resumed.state.opt_state) == bits(full.state.opt_state)
    assert bits(tree["params"]) == bits(full.state.params)


def test_init_hook_must_keep_the_structure():
    def bad(variables, images, rng):
        return {"params": {"only": jnp.zeros(3)}}

    with pytest.raises(ValueError, match="another structure"):
        build(tiny_cnn3(), dataclasses.replace(CFG, init_fn=bad), TRAIN)


# ------------------------------------------------------------------------ recipes and overrides


def test_recipes_keep_their_values_and_flags_override_them():
    cnn3, mlp = recipes.get("cnn3"), recipes.get("mlp")
    assert (cnn3.optimizer, cnn3.nesterov, cnn3.momentum, cnn3.schedule, cnn3.lr) == (
        "sgd", True, 0.9, "onecycle", 0.1)
    assert (cnn3.weight_decay, cnn3.label_smoothing, cnn3.epochs) == (5e-4, 0.1, 30)
    assert (cnn3.augment, cnn3.crop_pad, cnn3.flip, cnn3.cutout_size) == (True, 4, True, 0)
    assert cnn3.param_groups == DEFAULT_PARAM_GROUPS
    assert (mlp.optimizer, mlp.schedule, mlp.lr, mlp.weight_decay) == ("adamw", "cosine", 1e-3,
                                                                       1e-4)
    assert (mlp.augment, mlp.epochs, mlp.label_smoothing) == (False, 20, 0.0)
    assert recipes.for_model("resnet20") == cnn3
    with pytest.raises(ValueError, match="available: airbench94, airbench94_muon, cnn3, mlp"):
        recipes.get("nope")
    args = argparse.Namespace(lr=0.2, epochs=None, cutout_size=8, workdir="runs", seed=3)
    cfg = recipes.with_overrides(cnn3, args)
    assert (cfg.lr, cfg.epochs, cfg.cutout_size, cfg.seed) == (0.2, 30, 8, 3)
    assert recipes.with_overrides(mlp, {"augment": True}).augment is True
    assert json.loads(json.dumps(cfg.to_dict()))["param_groups"][0]["match"] == "ndim<2"


def test_old_checkpoint_config_is_the_clear_resume_error(tmp_path):
    engine = build(tiny_cnn3(), CFG, TRAIN)
    old = {k: v for k, v in CFG.to_dict().items() if k not in ("param_groups", "init_fn")}
    old["preprocess"] = {"mean": [0.5] * 3, "std": [0.25] * 3, "augment": True}
    checkpoint.save(tmp_path, engine.state, epoch=1, meta={"config": old, "history": []})
    with pytest.raises(ValueError, match=r"cannot resume .*different configuration"):
        fit(tiny_cnn3(), TRAIN, EVAL, config=CFG, workdir=tmp_path, progress=False, verbose=False)


# -------------------------------------------------------------------------- compiled programs


def test_second_build_with_the_same_config_compiles_nothing():
    compiles = []

    def listener(event, secs, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    from jaxcnn.train import shard_batch

    def run_once():
        engine = build(tiny_cnn3(), CFG, TRAIN)  # a new but equal model, a new optimizer call
        x, y = shard_batch(engine.mesh, TRAIN.images[:16], TRAIN.labels[:16])
        state, m = engine.train_step(engine.state, x, y)
        jax.block_until_ready(m)
        return engine

    run_once()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run_once()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.slow  # 5 s; the single-model hook test runs by default
def test_ensemble_members_each_get_the_hook_with_their_own_key():
    cfg = dataclasses.replace(CFG, ensemble=2, init_fn=scale_first_conv, ema_decay=0.9)
    model = tiny_cnn3()
    engine = build(model, cfg, TRAIN)
    plain = build(model, dataclasses.replace(cfg, init_fn=None), TRAIN)
    kernels = np.asarray(engine.state.params["block1_conv1"]["kernel"])
    for k in range(2):
        start = jax.tree.map(lambda a, k=k: np.asarray(a[k]), plain.state.variables)
        key = jax.random.fold_in(jax.random.key(cfg.seed + k), 0x1217)
        want = scale_first_conv(start, TRAIN.images, key)["params"]["block1_conv1"]["kernel"]
        np.testing.assert_array_equal(kernels[k], np.asarray(want, np.float32))
    assert bits(ema_params(engine.state)) == bits(engine.state.params)
