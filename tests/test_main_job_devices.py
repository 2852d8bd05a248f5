"""The main job end to end on 8 fake CPU devices and on 1: same results, no traceback.

``python -m experiments.cifar10 --models mlp,cnn3 --epochs 1 --batch-size 64`` runs in a
subprocess per device count (the count is fixed when JAX starts), both at once, on tiny
generated data: a small driver replaces ``experiments.cifar10.load_data`` (as
tests/test_cifar10_experiment.py does) and calls ``main`` with the real argv. The eval set has
100 images and the eval batch stays at its default 500, neither divisible by 8, so the padded
evaluation is exercised.

Tolerance for 8 vs 1 device: the trained params differ only by float32 summation order
(tests/test_multidevice.py: rtol 1e-4), so a prediction can flip only when its two top logits
are within that noise; we allow one image in 100.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
N_EVAL = 100

DRIVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from experiments import cifar10
    from jaxcnn.data import ArrayDataset

    def tiny(n, seed):  # the mean colour encodes the label, so the models learn something
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.int32)
        base = (labels[:, None, None, None] * 25).astype(np.float32)
        images = np.clip(base + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return ArrayDataset(images, labels, tuple(f"class{i}" for i in range(10)))

    data = (tiny(128, 0), tiny(N_EVAL, 1))
    cifar10.load_data = lambda args: data
    cifar10.main(sys.argv[1:])
    """
).replace("N_EVAL", str(N_EVAL))


def _start(tmp_path, n):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(n),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        MPLBACKEND="Agg",
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    workdir = tmp_path / f"run{n}"
    argv = ["--models", "mlp,cnn3", "--epochs", "1", "--batch-size", "64",
            "--workdir", str(workdir), "--visuals-dir", str(tmp_path / f"vis{n}"),
            "--no-figures", "--no-progress", "--eval-split", "fake"]
    proc = subprocess.Popen([sys.executable, str(driver), *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, workdir


def _finish(proc, workdir):
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    history = {name: [json.loads(line) for line in
                      (workdir / name / "metrics.jsonl").read_text().splitlines()]
               for name in results}
    return stdout, results, history


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("main_job")
    p8 = _start(tmp, 8)  # both at once
    p1 = _start(tmp, 1)
    return _finish(*p8), _finish(*p1)


def test_main_job_on_eight_devices_matches_one(runs):
    (out8, res8, hist8), (out1, res1, hist1) = runs
    assert set(res8) == set(res1) == {"mlp", "cnn3"}
    for name in ("mlp", "cnn3"):
        assert len(hist8[name]) == len(hist1[name]) == 1
        # fit's own evaluation (sharded, padded 100 -> 104 on 8 devices) ...
        assert hist8[name][0]["eval_accuracy"] == pytest.approx(
            hist1[name][0]["eval_accuracy"], abs=1.01 / N_EVAL), name
        # ... and the reported accuracy (predict_logits on the exported variables).
        assert res8[name]["test_accuracy"] == pytest.approx(
            res1[name]["test_accuracy"], abs=1.01 / N_EVAL), name
        for hist, res in ((hist8, res8), (hist1, res1)):
            # No eval image dropped or counted twice: both evaluations of the same final
            # params agree.
            assert hist[name][0]["eval_accuracy"] == pytest.approx(
                res[name]["test_accuracy"], abs=1.01 / N_EVAL), name


def test_logs_have_one_line_per_epoch_and_no_bars(runs):
    for out, _, _ in runs:
        assert "\r" not in out
        assert out.count("epoch 1/1: train loss") == 2  # one line per model
        assert "img/s" in out
