"""An ensemble of K models trained in one vmapped step equals K separate runs."""

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.train import (
    Preprocess,
    checkpoint,
    create_ensemble_state,
    create_train_state,
    ensemble_size,
    make_ensemble_eval_step,
    make_ensemble_train_step,
    make_optimizer,
    make_train_step,
    member,
)

PP = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, augment=True)


def test_ensemble_equals_separate_runs(tmp_path):
    model = models.create("cnn3", num_classes=3, filters=(4,), dropouts=(0.2,), dense=8)
    tx = make_optimizer("sgd", 0.05, schedule="cosine", total_steps=4, warmup_steps=1)
    seeds = [3, 7]
    ens = create_ensemble_state(model, tx, seeds, (1, 8, 8, 3))
    assert ensemble_size(ens) == 2
    singles = [create_train_state(model, tx, jax.random.key(s), (1, 8, 8, 3)) for s in seeds]
    estep = jax.jit(make_ensemble_train_step(PP))
    sstep = jax.jit(make_train_step(PP))
    rs = np.random.RandomState(0)
    for _ in range(3):
        images = rs.randint(0, 256, (8, 8, 8, 3)).astype(np.uint8)
        labels = rs.randint(0, 3, 8).astype(np.int32)
        ens, em = estep(ens, images, labels)
        assert em["loss"].shape == (2,)
        for k in range(2):
            singles[k], sm = sstep(singles[k], images, labels)
            np.testing.assert_allclose(em["loss"][k], sm["loss"], rtol=1e-5)
    for k in range(2):
        got, want = member(ens, k), singles[k]
        # atol: conv biases before BatchNorm have zero true gradient and stay ~1e-8 noise.
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(
            jax.tree.leaves(got.batch_stats), jax.tree.leaves(want.batch_stats), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Members really differ (different seeds).
    k0 = jax.tree.leaves(member(ens, 0).params)[-1]
    k1 = jax.tree.leaves(member(ens, 1).params)[-1]
    assert not np.allclose(k0, k1)

    out = jax.jit(make_ensemble_eval_step(PP))(ens, images, labels, np.ones(8, np.float32))
    assert out["logits"].shape == (2, 8, 3) and out["correct"].shape == (2,)
    assert float(out["count"]) == 8 and 0 <= float(out["ensemble_correct"]) <= 8

    # Ensemble states checkpoint and restore like single ones.
    checkpoint.save(tmp_path, ens, epoch=1, meta={"note": "ens"})
    restored, meta = checkpoint.restore(tmp_path, target=ens)  # target: structure only
    assert meta["epoch"] == 1 and meta["note"] == "ens"
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(ens), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
