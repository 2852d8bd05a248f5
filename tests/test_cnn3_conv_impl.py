"""cnn3's conv_impl options compute the same function and the same gradients.

``conv_impl="fast"`` swaps in a hand-written kernel gradient, a reshape max-pool and a fused
BatchNorm+ReLU backward (for speed on XLA:CPU); ``"onednn"`` runs the convolutions in oneDNN
(where installed); ``"lax"`` is plain ``nn.Conv`` / ``nn.BatchNorm`` / ``nn.max_pool``. Same
parameters must give the same logits, BatchNorm statistics and parameter gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.models.layers import resolve_conv_impl
from jaxcnn.ops import onednn

TINY = dict(filters=(4, 8), dropouts=(0.0, 0.0), dense=16, head_dropout=0.0)


def _loss_and_grads(impl, variables, x, y):
    model = models.create("cnn3", num_classes=5, conv_impl=impl, **TINY)

    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
            mutable=["batch_stats"],
        )
        onehot = jax.nn.one_hot(y, 5)
        return -(onehot * jax.nn.log_softmax(logits)).sum(-1).mean(), (logits, updates)

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
    variables = models.create("cnn3", num_classes=5, conv_impl="lax", **TINY).init(
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


def test_auto_resolves_by_backend_and_rejects_unknown():
    on_cpu = "onednn" if onednn.available() else "fast"
    expected = on_cpu if jax.default_backend() == "cpu" else "lax"
    assert resolve_conv_impl("auto") == expected
    assert resolve_conv_impl("lax") == "lax"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("cudnn")
