"""fit: resume equals an uninterrupted run; NaN stops with a message; config mismatch errors."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_data import random_dataset, tiny_cnn3

from jaxcnn import models
from jaxcnn.train import FitConfig, TrainingDiverged, checkpoint, evaluate_dataset, fit

CFG = FitConfig(epochs=2, batch_size=16, eval_batch_size=8, lr=0.05, log_every=2)


TRAIN, EVAL = random_dataset(64, 0), random_dataset(20, 1)
MODEL = tiny_cnn3()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    return workdir, fit(MODEL, TRAIN, EVAL, config=CFG, workdir=workdir, progress=False)


def test_resume_equals_uninterrupted(full_run, tmp_path):
    workdir, full = full_run
    first = fit(
        MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path, stop_after_epoch=1, progress=False
    )
    assert [r["epoch"] for r in first.history] == [1]
    assert checkpoint.latest_epoch(tmp_path) == 1
    resumed = fit(MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for a, b in zip(
        jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    # Resuming a finished run does nothing more.
    again = fit(MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path, progress=False)
    assert len(again.history) == 2
    # Best checkpoint and the eval-only helper.
    best_tree, meta = checkpoint.restore(tmp_path, "best")
    assert meta["epoch"] in (1, 2) and "params" in best_tree
    ev = evaluate_dataset(resumed.state, EVAL, _preprocess_of(meta), batch_size=8)
    assert ev["logits"].shape == (20, 3)
    assert ev["accuracy"] == pytest.approx(resumed.history[-1]["eval_accuracy"], abs=1e-6)


def _preprocess_of(meta):
    from jaxcnn.train import Preprocess

    return Preprocess(**meta["config"]["normalization"])


def test_resume_with_other_config_is_a_clear_error(full_run):
    workdir, _ = full_run
    other = dataclasses.replace(CFG, batch_size=32)
    with pytest.raises(ValueError, match=r"cannot resume.*batch_size: saved 16 vs now 32"):
        fit(MODEL, TRAIN, EVAL, config=other, workdir=workdir, progress=False)
    wider = models.create("cnn3", num_classes=3, filters=(8,), dropouts=(0.1,), dense=8)
    with pytest.raises(ValueError, match="cannot resume.*model"):
        fit(wider, TRAIN, EVAL, config=CFG, workdir=workdir, progress=False)


class NaNAfter(nn.Module):
    """A linear model whose train-mode logits become NaN after ``after`` steps (a counter
    kept in batch_stats), to make a run diverge at a known step."""

    num_classes: int = 3
    after: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        count = self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32))
        logits = nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))
        if train:
            count.value = count.value + 1
            logits = logits + jnp.where(count.value > self.after, jnp.nan, 0.0)
        return logits


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = FitConfig(
        epochs=3, batch_size=16, eval_batch_size=10, lr=0.01, log_every=1, augment=False
    )
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 2.*epoch 1 is kept"):
        fit(NaNAfter(), TRAIN, EVAL, config=cfg, workdir=tmp_path, progress=False)
    tree, meta = checkpoint.restore(tmp_path)
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(tree["params"]))
    assert int(tree["batch_stats"]["count"]) == 4  # 64 / 16 steps in epoch 1


def test_no_checkpoint_and_bad_config():
    assert checkpoint.restore("/nonexistent/workdir") is None
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        FitConfig(batch_size=0)
    with pytest.raises(ValueError, match="optimizer 'adam'"):
        FitConfig(optimizer="adam")
