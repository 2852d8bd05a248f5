"""Parameters that no update moves any more are not differentiated: from the epoch a group's
training window has ended (or from the start for ``lr_scale=0``), ``fit`` runs a train step
that cuts their gradient, which changes no update and saves that part of the backward pass
(airbench's whitening bias, frozen after epoch 3, is the input gradient of the first 3x3
conv)."""

import dataclasses

import jax
import numpy as np
import pytest
from tiny_data import tiny_cifar

from jaxcnn import models
from jaxcnn.flops import train_step_flops
from jaxcnn.train import ParamGroup, build, builder, fit, recipes
from jaxcnn.train.mesh import shard_batch
from jaxcnn.train.optim import DEFAULT_PARAM_GROUPS, frozen_leaves

PARAMS = {
    "stem": {"kernel": np.zeros((3, 3, 3, 4)), "bias": np.zeros(4)},
    "head": {"kernel": np.zeros((4, 2))},
}


def _mask(groups, epoch, steps_per_epoch=4, clip_norm=None):
    mask = frozen_leaves(PARAMS, groups, epoch, steps_per_epoch, clip_norm)
    return None if mask is None else {k: dict(v) for k, v in mask.items()}


def test_a_group_is_frozen_from_the_first_epoch_after_its_window():
    groups = (ParamGroup("^stem/kernel", lr_scale=0.0), ParamGroup("^stem/bias", stop_epoch=2.5),
              ParamGroup("^head/", start_epoch=1))
    never = {"stem": {"kernel": True, "bias": False}, "head": {"kernel": False}}
    # stop_epoch 2.5 of 4 steps: the bias trains in steps 0-9; epoch 2 (steps 8-11) still uses
    # its gradient, epoch 3 (from step 12) does not
    assert [_mask(groups, e) for e in range(3)] == [never] * 3
    assert _mask(groups, 3) == {"stem": {"kernel": True, "bias": True}, "head": {"kernel": False}}
    # the head starts later: it is never frozen (its momentum gathers gradients first)
    assert _mask(groups, 0)["head"]["kernel"] is False


def test_nothing_is_frozen_without_such_groups_or_with_clipping():
    assert _mask(DEFAULT_PARAM_GROUPS, 5) is None
    assert _mask((ParamGroup("^stem/", lr_scale=0.0),), 0, clip_norm=1.0) is None


def _airbench_setup(epochs=3):
    model = models.create("airbench94_muon", widths=(8, 16, 16))
    config = dataclasses.replace(
        recipes.get("airbench94_muon"), epochs=epochs, batch_size=16,
        init_fn=None, eval_batch_size=32)
    groups = list(config.param_groups)
    groups[1] = ParamGroup("^whiten/bias", stop_epoch=1, anneal_in_window=True)
    return model, dataclasses.replace(config, param_groups=tuple(groups))


def test_the_step_after_the_window_skips_the_first_convs_input_gradient():
    model, config = _airbench_setup()
    train = tiny_cifar(48, 0)
    engine = build(model, config, train)
    steps = [engine.train_steps_for(e)[0] for e in range(3)]
    assert steps[0] is engine.train_step and steps[1] is steps[2] and steps[1] is not steps[0]
    flops = [train_step_flops(s, engine.state, 16, (32, 32, 3)) for s in steps[:2]]
    # block1.conv1 (3x3, 24 -> 8 channels, on the whitened 31x31 map): its input gradient
    # costs 2 * N * 31 * 31 * 9 * 24 * 8 FLOPs, plus the whitening GELU's backward
    dgrad = 2 * 16 * 31 * 31 * 9 * 24 * 8
    assert dgrad <= flops[0] - flops[1] <= 1.1 * dgrad


def test_one_step_after_the_window_is_the_same_update_either_way():
    """The same state and batch through epoch 1's step (the stem differentiated) and epoch 2's
    (not): the frozen leaves stay bitwise, every other leaf gets the same update."""
    model, config = _airbench_setup()
    train = tiny_cifar(48, 2)
    engine = build(model, config, train)
    full, cut = engine.train_steps_for(0)[0], engine.train_steps_for(1)[0]
    batches = [shard_batch(engine.mesh, train.images[i:i + 16], train.labels[i:i + 16])
               for i in (0, 16, 32)]
    state = engine.state
    for x, y in batches:  # epoch 1 (3 steps): the bias's window; its rate is 0 from here on
        state, _ = full(state, x, y)
    before = jax.device_get(state.params)

    def copy():  # the steps donate their input state
        return jax.tree.map(lambda leaf: leaf.copy(), state)

    x, y = batches[0]
    a, metrics_a = cut(copy(), x, y)
    b, metrics_b = full(copy(), x, y)
    assert float(metrics_a["loss"]) == pytest.approx(float(metrics_b["loss"]), rel=1e-6)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(a.params["whiten"][name], before["whiten"][name])
        np.testing.assert_array_equal(b.params["whiten"][name], before["whiten"][name])
    for x1, x2, x0 in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params),
                          jax.tree.leaves(before), strict=True):
        step = float(np.abs(np.asarray(x2) - np.asarray(x0)).max())
        # one update, rounded differently by two programs: 1e-3 of the update's size
        np.testing.assert_allclose(x1, x2, rtol=0, atol=1e-3 * step + 1e-7)


@pytest.mark.parametrize("on_device", [False, True])
def test_fit_runs_each_epochs_step_and_ends_where_a_fit_without_the_cut_does(
        tmp_path, monkeypatch, on_device):
    model, config = _airbench_setup()
    config = dataclasses.replace(config, data_on_device=on_device)
    train = tiny_cifar(48, 1)
    asked = []
    steps_for = builder.Engine.train_steps_for
    monkeypatch.setattr(builder.Engine, "train_steps_for",
                        lambda self, epoch: asked.append(epoch) or steps_for(self, epoch))
    skipped = fit(model, train, None, config=config, workdir=tmp_path / "skip",
                  verbose=False)
    assert asked[-3:] == [0, 1, 2]  # the feed asks for each epoch's step
    monkeypatch.setattr(builder, "frozen_leaves", lambda *a, **k: None)
    jax.clear_caches()
    full = fit(model, train, None, config=config, workdir=tmp_path / "full", verbose=False)
    a, b = skipped.state.params, full.state.params
    np.testing.assert_array_equal(a["whiten"]["bias"], b["whiten"]["bias"])
    np.testing.assert_array_equal(a["whiten"]["kernel"], b["whiten"]["kernel"])
    # the same updates; the two compiled programs round differently and 6 Muon steps after the
    # cut carry that on (tiny BatchNorm batches of 16): within 1% of each leaf's scale, where
    # a wrongly frozen or wrongly trained leaf would be off by a whole step or more
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-2 * float(np.abs(y).max()))
    assert [h["train_loss"] for h in skipped.history] == pytest.approx(
        [h["train_loss"] for h in full.history], rel=1e-3)
