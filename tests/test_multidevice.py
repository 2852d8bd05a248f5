"""8 fake CPU devices give the same losses and params as 1 device (data parallel, synced BN).

Each run is a subprocess: the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxcnn import models
    from jaxcnn.train import (Preprocess, create_train_state, jit_train_step, make_mesh,
                              make_optimizer, make_train_step, replicate, shard_batch)

    mesh = make_mesh()
    model = models.create("cnn3", num_classes=3, filters=(4,), dropouts=(0.1,), dense=8)
    tx = make_optimizer("sgd", 0.05, schedule="constant", total_steps=5)
    state = replicate(create_train_state(model, tx, jax.random.key(0), (1, 8, 8, 3)), mesh)
    pp = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True)
    step = jit_train_step(make_train_step(pp), mesh)
    rs = np.random.RandomState(0)
    losses, shards = [], None
    for i in range(5):
        images = rs.randint(0, 256, (16, 8, 8, 3)).astype(np.uint8)
        labels = rs.randint(0, 3, 16).astype(np.int32)
        x, y = shard_batch(mesh, images, labels)
        shards = sorted({s.data.shape[0] for s in x.addressable_shards}), len(x.sharding.device_set)
        state, m = step(state, x, y)
        losses.append(float(m["loss"]))
    leaves = [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(state.params)]
    stats = [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(state.batch_stats)]
    json.dump({"devices": jax.device_count(), "mesh": mesh.size, "shard_rows": shards[0],
               "shard_devices": shards[1], "losses": losses, "params": leaves,
               "batch_stats": stats}, open(sys.argv[1], "w"))
    """
)


def _start(tmp_path, n):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(n),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
    )
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


def test_eight_devices_match_one(tmp_path):
    p8 = _start(tmp_path, 8)  # both subprocesses run at once
    p1 = _start(tmp_path, 1)
    r8, r1 = _finish(*p8), _finish(*p1)
    assert r1["devices"] == 1 and r1["shard_rows"] == [16]
    assert r8["devices"] == 8 and r8["mesh"] == 8
    assert r8["shard_devices"] == 8 and r8["shard_rows"] == [2]  # 16 rows split 2 per device
    np.testing.assert_allclose(r8["losses"], r1["losses"], rtol=1e-4)
    assert r1["losses"][-1] != r1["losses"][0]
    for a, b in zip(r8["params"], r1["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # BatchNorm running statistics are computed over the global batch on both.
    for a, b in zip(r8["batch_stats"], r1["batch_stats"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
