"""8 fake CPU devices give the same numbers as 1 device (data parallel, synced BN).

Each run is a subprocess: the device count is fixed when JAX starts. Both device counts run at
once. Checked through ``fit`` itself, on both data paths (host batches, and the dataset kept on
the device): the loss curve of 5 steps, the params and BatchNorm statistics (rtol 1e-4), the
evaluation of an eval set that 8 does not divide with the default eval batch; then
``evaluate_dataset`` with such a batch, and the clear error for a train batch the devices
cannot split.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from device_env import fake_cpu_devices

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax, numpy as np
    from jaxcnn import models
    from jaxcnn.data import ArrayDataset
    from jaxcnn.train import FitConfig, Preprocess, evaluate_dataset, fit, make_mesh, shard_batch

    mesh = make_mesh()
    model = models.create("cnn3", num_classes=3, filters=(4,), dropouts=(0.1,), dense=8)
    pp = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3)

    def data(n, seed):
        r = np.random.RandomState(seed)
        return ArrayDataset(r.randint(0, 256, (n, 8, 8, 3)).astype(np.uint8),
                            r.randint(0, 3, n), ("a", "b", "c"))

    # 16 training images, batch 16: every epoch is one step, so 5 epochs give the loss curve
    # of 5 steps. The eval set (20 images) and the default eval batch (500, capped at 20) do
    # not split over 8 devices.
    train, evaluation = data(16, 1), data(20, 2)
    x, = shard_batch(mesh, train.images)
    shards = sorted({s.data.shape[0] for s in x.addressable_shards}), len(x.sharding.device_set)

    def tolist(tree):
        return [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(tree)]

    runs = {}
    for on_device in (False, True):
        cfg = FitConfig(epochs=5, batch_size=16, lr=0.05, log_every=1, schedule="constant",
                        data_on_device=on_device, keep_checkpoints=1)
        res = fit(model, train, evaluation, config=cfg, workdir=tempfile.mkdtemp(),
                  progress=False, verbose=False)
        assert res.data_on_device is on_device
        runs[str(on_device)] = {
            "history": res.history,
            "params": tolist(res.state.params),
            "batch_stats": tolist(res.state.batch_stats),
            "eval_logits": evaluate_dataset(res.state, evaluation, pp, batch_size=7)["logits"]
                           .tolist(),
        }
    bad_batch = None
    if mesh.size == 8:
        try:
            fit(model, train, evaluation, config=FitConfig(epochs=1, batch_size=12),
                workdir=tempfile.mkdtemp(), progress=False, verbose=False)
        except ValueError as err:
            bad_batch = str(err)
    json.dump({"devices": jax.device_count(), "mesh": mesh.size, "shard_rows": shards[0],
               "shard_devices": shards[1], "fit": runs, "bad_batch": bad_batch},
              open(sys.argv[1], "w"))
    """
)


def _start(tmp_path, n):
    env = {**os.environ, **fake_cpu_devices(n)}
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out{n}.json"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _finish(proc, out):
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("devices")
    (tmp / "8").mkdir()
    (tmp / "1").mkdir()
    p8 = _start(tmp / "8", 8)  # both subprocesses run at once
    p1 = _start(tmp / "1", 1)
    return _finish(*p8), _finish(*p1)


def _curve(run, key):
    return [rec[key] for rec in run["history"]]


def test_batches_are_split_over_the_devices(runs):
    r8, r1 = runs
    assert r1["devices"] == 1 and r1["shard_rows"] == [16]
    assert r8["devices"] == 8 and r8["mesh"] == 8
    assert r8["shard_devices"] == 8 and r8["shard_rows"] == [2]  # 16 rows split 2 per device


@pytest.mark.parametrize("path", ["False", "True"], ids=["host data", "device data"])
def test_fit_on_eight_devices_matches_one(runs, path):
    """fit's 5-step loss curve, params, BatchNorm statistics and padded evaluation."""
    f8, f1 = runs[0]["fit"][path], runs[1]["fit"][path]
    assert [r["epoch"] for r in f8["history"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(_curve(f8, "train_loss"), _curve(f1, "train_loss"), rtol=1e-4)
    assert _curve(f1, "train_loss")[0] != _curve(f1, "train_loss")[-1]
    np.testing.assert_allclose(_curve(f8, "eval_loss"), _curve(f1, "eval_loss"), rtol=1e-4)
    assert _curve(f8, "eval_accuracy") == _curve(f1, "eval_accuracy")
    for a, b in zip(f8["params"], f1["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # BatchNorm running statistics are computed over the global batch on both.
    for a, b in zip(f8["batch_stats"], f1["batch_stats"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # evaluate_dataset with batch 7 (-> 8 on 8 devices): every one of the 20 rows, in order.
    assert np.shape(f8["eval_logits"]) == np.shape(f1["eval_logits"]) == (20, 3)
    np.testing.assert_allclose(f8["eval_logits"], f1["eval_logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["8 devices", "1 device"])
def test_device_data_path_equals_host_path(runs, which):
    """Keeping the dataset on the device changes nothing but speed (same batches, same order)."""
    host, device = runs[which]["fit"]["False"], runs[which]["fit"]["True"]
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(_curve(device, key), _curve(host, key), rtol=1e-6)
    for a, b in zip(device["params"], host["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_train_batch_the_devices_cannot_split_is_a_clear_error(runs):
    r8, _ = runs
    assert "batch_size 12 is not divisible by the 8 devices" in r8["bad_batch"]
    assert "8 or 16" in r8["bad_batch"]
