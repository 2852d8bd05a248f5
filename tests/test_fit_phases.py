"""fit's phases: a workdir that is a file, the backend and matmul precision settings, a body
short enough to read, and transfer's head run going through the same phases (checkpoints,
resume, metrics.jsonl)."""

import ast
import dataclasses
import inspect
import json
import shutil

import jax
import numpy as np
import pytest
from tiny_data import random_dataset, tiny_cnn3

from jaxcnn import transfer
from jaxcnn.ops import backend
from jaxcnn.train import FitConfig, fit, loop

TRAIN, EVAL = random_dataset(32, 0), random_dataset(8, 1)
CFG = FitConfig(epochs=2, batch_size=16, eval_batch_size=8, lr=0.05, log_every=2,
                data_on_device=False)


def test_fit_body_is_short():
    fn = next(n for n in ast.parse(inspect.getsource(loop)).body
              if isinstance(n, ast.FunctionDef) and n.name == "fit")
    body = fn.end_lineno - fn.body[0].end_lineno  # after the docstring
    assert body <= 80, f"fit's body has {body} lines"


def test_workdir_that_is_a_file_is_a_clear_error_before_any_work(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for workdir, what in ((a_file, "is a file"), (a_file / "run", "is inside")):
        with pytest.raises(ValueError, match=f"workdir {workdir} {what}.*pass a folder path"):
            fit(tiny_cnn3(), TRAIN, EVAL, config=CFG, workdir=workdir, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="workdir .* is a file"):
        transfer.train_head(np.zeros((4, 2), np.float32), np.zeros(4, np.int32), 2,
                            epochs=1, progress=False, workdir=a_file)


def test_backend_is_checked_entered_and_not_part_of_resume(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="FitConfig.backend must be one of 'auto', 'lax'"):
        FitConfig(backend="cuda")
    seen = []

    def spy(variables, images, rng):  # init_fn runs inside build, inside fit's backend
        seen.append(backend.selected())
        return variables

    cfg = dataclasses.replace(CFG, backend="lax", init_fn=spy)
    fit(tiny_cnn3(), TRAIN, EVAL, config=cfg, workdir=tmp_path, verbose=False,
        stop_after_epoch=1)
    assert seen == ["lax"]
    assert backend.selected() == "auto"  # left as it was
    # A run may resume on another backend (a kernel choice, not a hyper-parameter).
    resumed = fit(tiny_cnn3(), TRAIN, EVAL, config=dataclasses.replace(cfg, backend="fast"),
                  workdir=tmp_path, verbose=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    # "auto" keeps the setting around the call ($JAXCNN_BACKEND here).
    monkeypatch.setenv(backend.ENV_VAR, "fast")
    seen.clear()
    fit(tiny_cnn3(), TRAIN, None, config=dataclasses.replace(CFG, epochs=1, init_fn=spy),
        workdir=tmp_path / "env", verbose=False)
    assert seen == ["fast"]


def test_matmul_precision_is_checked_entered_and_part_of_resume(tmp_path):
    with pytest.raises(ValueError,
                       match="FitConfig.matmul_precision must be None, 'float32' or 'bfloat16'"):
        FitConfig(matmul_precision="fp8")
    seen = []

    def spy(variables, images, rng):  # init_fn runs inside build, inside fit's precision
        seen.append(jax.config.jax_default_matmul_precision)
        return variables

    cfg = dataclasses.replace(CFG, matmul_precision="bfloat16", init_fn=spy)
    fit(tiny_cnn3(), TRAIN, EVAL, config=cfg, workdir=tmp_path, verbose=False,
        stop_after_epoch=1)
    assert seen == ["bfloat16"]
    assert jax.config.jax_default_matmul_precision is None  # left as it was
    # It changes the numbers: a run does not resume with another precision.
    with pytest.raises(ValueError, match="different configuration.*matmul_precision"):
        fit(tiny_cnn3(), TRAIN, EVAL, config=dataclasses.replace(cfg, matmul_precision=None),
            workdir=tmp_path, verbose=False)
    with jax.default_matmul_precision("bfloat16"):  # None keeps the setting around the call
        seen.clear()
        fit(tiny_cnn3(), TRAIN, None, config=dataclasses.replace(CFG, epochs=1, init_fn=spy),
            workdir=tmp_path / "around", verbose=False)
    assert seen == ["bfloat16"]


def _features(n=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, n).astype(np.int32)
    return (centers[y] + rng.normal(size=(n, 6))).astype(np.float32), y


def _timeless(history):
    return [{k: v for k, v in r.items()
             if k not in ("images_per_s", "epoch_seconds", "compile_seconds")}
            for r in history]


def test_train_head_checkpoints_and_resumes_like_fit(tmp_path, capsys):
    x, y = _features()
    kw = dict(val=(x[:12], y[:12]), epochs=3, batch_size=16, lr=1e-2, progress=False)
    full, full_hist = transfer.train_head(x, y, 3, **kw)  # no workdir: nothing kept
    run = tmp_path / "head"
    transfer.train_head(x, y, 3, workdir=run, **kw)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # As if killed after epoch 2: drop epoch 3's checkpoints, run again, it resumes there.
    for which in ("latest", "best"):
        shutil.rmtree(run / "checkpoints" / which / "3", ignore_errors=True)
    capsys.readouterr()
    head, hist = transfer.train_head(x, y, 3, workdir=run, **dict(kw, progress=True))
    assert f"resumed from epoch 2 ({run})" in capsys.readouterr().out
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), head, full)
    assert _timeless(hist) == _timeless(full_hist)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match=r"cannot resume from .*head.*lr: saved 0.01 vs now 0.1"):
        transfer.train_head(x, y, 3, workdir=run, **dict(kw, lr=0.1))
    again, _ = transfer.train_head(x, y, 3, workdir=run, resume=False, **dict(kw, lr=0.1))
    assert not np.array_equal(again["kernel"], full["kernel"])
