"""fit's output for logs (one line per epoch, a line on resume, no bars off a terminal) and its
data_on_device option (same numbers as the host path)."""

import dataclasses
import io
import sys

import jax
import numpy as np
import pytest
from tiny_data import random_dataset, tiny_cnn3

from jaxcnn.train import FitConfig, fit, phases, resolve_data_on_device

TRAIN, EVAL = random_dataset(48, 0), random_dataset(10, 1)
MODEL = tiny_cnn3()
CFG = FitConfig(epochs=2, batch_size=16, lr=0.05, log_every=2, data_on_device=False)


def test_lines_for_logs_resume_and_quiet(tmp_path, capsys):
    # Under pytest stderr is not a terminal: progress defaults to off, no bars.
    fit(MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path, stop_after_epoch=1)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/2: train loss "), lines
    assert "eval loss" in lines[0] and "img/s" in lines[0]
    assert "\r" not in captured.out + captured.err
    fit(MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resumed from epoch 1 ({tmp_path})"
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2: train loss ")
    fit(MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path, verbose=False)  # finished: no work
    quiet = tmp_path / "quiet"
    fit(MODEL, TRAIN, None, config=CFG, workdir=quiet, verbose=False, stop_after_epoch=1)
    assert capsys.readouterr().out == ""


def test_progress_defaults_to_whether_stderr_is_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert phases.stderr_is_terminal()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not phases.stderr_is_terminal()


def test_data_on_device_gives_the_same_run(tmp_path):
    host = fit(MODEL, TRAIN, EVAL, config=CFG, workdir=tmp_path / "host", verbose=False)
    assert not host.data_on_device
    # Epoch 1 on the device path, 2 steps per call (3 steps: a 2-step and a 1-step call), then
    # resumed on the host path (the data path may change on resume): the same run.
    cfg = dataclasses.replace(CFG, data_on_device=True, steps_per_dispatch=2)
    mixed = tmp_path / "mixed"
    dev = fit(MODEL, TRAIN, EVAL, config=cfg, workdir=mixed, stop_after_epoch=1, verbose=False)
    assert dev.data_on_device
    resumed = fit(MODEL, TRAIN, EVAL, config=CFG, workdir=mixed, verbose=False)
    assert not resumed.data_on_device
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
        assert [r[key] for r in dev.history] == pytest.approx([host.history[0][key]], rel=1e-6)
        assert [r[key] for r in resumed.history] == pytest.approx(
            [r[key] for r in host.history], rel=1e-6)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(host.state.params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_data_on_device_setting(monkeypatch):
    with pytest.raises(ValueError, match="data_on_device must be True, False or 'auto'"):
        FitConfig(data_on_device="yes")
    with pytest.raises(ValueError, match="steps_per_dispatch must be a positive int"):
        FitConfig(steps_per_dispatch=0)
    assert resolve_data_on_device(True, TRAIN) and not resolve_data_on_device(False, TRAIN)
    assert not resolve_data_on_device("auto", TRAIN)  # CPU: the host path
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert not resolve_data_on_device(True, TRAIN)  # several processes: always the host path
