"""The kernel backends (jaxcnn.ops.backend): one setting, read by the layers, never by models.

The ``fast`` backend swaps in a hand-written kernel gradient, a reshape max-pool and a fused
BatchNorm+ReLU backward (for speed on XLA:CPU); ``onednn`` runs the convolutions in oneDNN and
BatchNorm+ReLU(+pool) in C++ (where installed); ``lax`` is plain ``nn.Conv`` / ``nn.BatchNorm``
/ ``nn.max_pool``. Same parameters must give the same logits, BatchNorm statistics and
parameter gradients, and the course's model files must not mention kernels at all.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.ops import backend, onednn

TINY = dict(filters=(4, 8), dropouts=(0.0, 0.0), dense=16, head_dropout=0.0)


def _loss_and_grads(impl, variables, x, y):
    model = models.create("cnn3", num_classes=5, **TINY)

    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
            mutable=["batch_stats"],
        )
        onehot = jax.nn.one_hot(y, 5)
        return -(onehot * jax.nn.log_softmax(logits)).sum(-1).mean(), (logits, updates)

    with backend.use(impl):  # traced here, eagerly: no compiled function is shared
        (value, (logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(
            variables["params"]
        )
    return value, logits, updates["batch_stats"], grads


IMPLS = ["fast", pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn.available(), reason=f"oneDNN unavailable: {onednn.unavailable_reason()}"))]


@pytest.mark.parametrize("impl", IMPLS)
def test_impl_and_lax_agree_on_values_stats_and_gradients(impl):
    x = jax.random.normal(jax.random.key(0), (6, 16, 16, 3))
    y = jnp.arange(6) % 5
    with backend.use("lax"):
        variables = models.create("cnn3", num_classes=5, **TINY).init(
            jax.random.key(1), x, train=False
        )
    lax_out = _loss_and_grads("lax", variables, x, y)
    impl_out = _loss_and_grads(impl, variables, x, y)
    for a, b in zip(jax.tree.leaves(lax_out[:3]), jax.tree.leaves(impl_out[:3]), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.abs(a).max()), 1e-12)
        assert np.abs(a - b).max() <= 1e-5 * scale
    # Gradients against the largest gradient: the conv biases feed a BatchNorm, so theirs are
    # zero in exact arithmetic (rounding noise of either implementation).
    grads_lax, grads_impl = jax.tree.leaves(lax_out[3]), jax.tree.leaves(impl_out[3])
    scale = max(float(np.abs(a).max()) for a in grads_lax)
    for a, b in zip(grads_lax, grads_impl, strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * scale
    # The gradients are not trivially zero: the comparison above means something.
    first_kernel = lax_out[3]["block1_conv1"]["kernel"]
    assert float(jnp.abs(first_kernel).max()) > 1e-4


def test_param_trees_are_identical_across_backends():
    x = jnp.zeros((2, 16, 16, 3))
    trees = {}
    for name in ("lax", "fast", "onednn"):
        with backend.use(name):
            v = models.create("cnn3", num_classes=5, **TINY).init(jax.random.key(1), x)
        trees[name] = jax.tree.map(lambda a: (a.shape, a.dtype), v)
    assert trees["lax"] == trees["fast"] == trees["onednn"]


def test_auto_resolves_by_platform_and_rejects_unknown(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    on_cpu = "onednn" if onednn.available() else "fast"
    expected = on_cpu if jax.default_backend() == "cpu" else "lax"
    assert backend.selected() == "auto"
    assert backend.resolve() == backend.resolve("auto") == expected
    assert backend.resolve("lax") == "lax"
    with pytest.raises(ValueError, match="unknown backend 'cudnn'.*auto, lax, fast, onednn"):
        backend.resolve("cudnn")
    with pytest.raises(ValueError, match="unknown backend"), backend.use("cudnn"):
        pass


def test_use_nests_and_restores_and_beats_the_environment(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "lax")
    assert backend.selected() == "lax"
    with backend.use("fast") as resolved:
        assert resolved == "fast" and backend.selected() == "fast"
        with backend.use("auto"):
            assert backend.selected() == "auto"
        assert backend.selected() == "fast"
    assert backend.selected() == "lax"
    monkeypatch.setenv(backend.ENV_VAR, "tpu-magic")
    with pytest.raises(ValueError, match="JAXCNN_BACKEND"):
        backend.selected()


def test_the_setting_reaches_every_layer_kind():
    """The same tiny net traced under lax and fast gives different programs (the layers did
    read the setting) and the same numbers."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    model = models.create("cnn3", num_classes=5, **TINY)
    variables = model.init(jax.random.key(1), x)

    def forward(v):
        return model.apply(v, x, train=True, mutable=["batch_stats"])[0]

    programs, outs = {}, {}
    for name in ("lax", "fast"):
        with backend.use(name):
            programs[name] = jax.make_jaxpr(jax.grad(lambda v: forward(v).sum()))(variables)
            outs[name] = forward(variables)
    assert "select_and_scatter" in str(programs["lax"])  # nn.max_pool's gradient
    assert "select_and_scatter" not in str(programs["fast"])
    np.testing.assert_allclose(outs["lax"], outs["fast"], rtol=1e-5, atol=1e-6)


KERNEL_WORDS = re.compile(r"conv_impl|\bimpl\b|native|fused|fold_pool|onednn|depthwise_impl")


def test_course_models_hold_no_kernel_choice():
    """Models describe the network; jaxcnn/models/layers.py alone picks kernels."""
    folder = Path(models.__file__).parent
    offenders = {
        p.name: KERNEL_WORDS.findall(p.read_text())
        for p in sorted(folder.glob("*.py")) if p.name not in ("layers.py", "__init__.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
