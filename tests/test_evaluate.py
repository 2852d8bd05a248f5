"""jaxcnn.evaluate against sklearn.metrics, and batched prediction against a direct apply."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcnn import evaluate as ev

K = 5


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K)).astype(np.float32)
    logits[np.arange(n), labels] += 1.0  # better than chance
    return logits, labels


class Tiny(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def test_accuracy_matches_sklearn(data):
    logits, labels = data
    assert ev.accuracy(logits, labels) == pytest.approx(
        skm.accuracy_score(labels, logits.argmax(1))
    )
    assert ev.accuracy(logits.argmax(1), labels) == ev.accuracy(logits, labels)
    assert ev.accuracy(jnp.asarray(logits), jnp.asarray(labels)) == ev.accuracy(logits, labels)


@pytest.mark.parametrize("k", [1, 2, 3, K - 1])
def test_top_k_matches_sklearn(data, k):
    logits, labels = data
    expected = skm.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(K))
    assert ev.top_k_accuracy(logits, labels, k) == pytest.approx(expected)


def test_confusion_matrix_and_per_class(data):
    logits, labels = data
    pred = logits.argmax(1)
    cm = ev.confusion_matrix(pred, labels, K)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, pred, labels=np.arange(K)))
    assert cm.shape == (K, K) and np.issubdtype(cm.dtype, np.integer)
    np.testing.assert_array_equal(ev.confusion_matrix(logits, labels, K), cm)
    _, recall, _, _ = skm.precision_recall_fscore_support(
        labels, pred, labels=np.arange(K), zero_division=0
    )
    np.testing.assert_allclose(ev.per_class_accuracy(pred, labels, K), recall)


def test_per_class_nan_for_absent_class():
    acc = ev.per_class_accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    np.testing.assert_allclose(acc[:2], [0.5, 1.0])
    assert np.isnan(acc[2])


def test_precision_recall_f1_and_report(data):
    logits, labels = data
    pred = logits.argmax(1)
    pred[pred == 4] = 3  # class 4 never predicted: precision is 0 (zero_division)
    got = ev.precision_recall_f1(pred, labels, K)
    want = skm.precision_recall_fscore_support(labels, pred, labels=np.arange(K), zero_division=0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w)
    names = ["plane", "car", "bird", "cat", "deer"]
    report = ev.classification_report(pred, labels, names)
    assert "precision" in report and "f1-score" in report
    for name in names:
        assert name in report
    cat_line = next(line for line in report.splitlines() if line.strip().startswith("cat"))
    assert f"{want[0][3]:.3f}" in cat_line and str(want[3][3]) in cat_line
    acc_line = next(line for line in report.splitlines() if "accuracy" in line)
    assert f"{skm.accuracy_score(labels, pred):.3f}" in acc_line
    with pytest.raises(ValueError, match="class names"):
        ev.classification_report(pred, labels, names[:3], num_classes=K)


def test_most_confident_mistakes():
    probs = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]], dtype=np.float32
    )
    labels = np.array([0, 0, 1, 0, 1])  # mistakes: 1 (0.8), 2 (0.6), 3 (0.95), 4 (0.7)
    np.testing.assert_array_equal(ev.most_confident_mistakes(probs, labels, 3), [3, 1, 4])
    np.testing.assert_array_equal(ev.most_confident_mistakes(probs, labels, 10), [3, 1, 4, 2])
    assert ev.most_confident_mistakes(probs, probs.argmax(1), 5).size == 0


def test_bad_inputs_raise_clear_errors(data):
    logits, labels = data
    with pytest.raises(ValueError, match="out of range"):
        ev.confusion_matrix(labels, labels + 1, K)
    with pytest.raises(ValueError, match="must match"):
        ev.accuracy(logits[:10], labels)
    with pytest.raises(ValueError, match="k must be"):
        ev.top_k_accuracy(logits, labels, K + 1)
    with pytest.raises(ValueError, match="shape"):
        ev.accuracy(logits[None], labels)


def test_predict_logits_matches_apply_and_pads():
    model = Tiny(num_classes=3)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = ev.predict_logits(model.apply, variables, images, mean=mean, std=std, batch_size=3)
    x = (images / 255.0 - np.array(mean)) / np.array(std)
    want = model.apply(variables, jnp.asarray(x, jnp.float32), train=False)
    assert got.shape == (7, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
    scalar = ev.predict_logits(model.apply, variables, images, mean=0.5, std=(0.25,))
    want_scalar = model.apply(variables, jnp.asarray((images / 255.0 - 0.5) / 0.25), train=False)
    np.testing.assert_allclose(scalar, np.asarray(want_scalar), rtol=1e-5, atol=1e-5)
    # the same model and statistics reuse one compiled forward
    assert ev.make_forward(model.apply, mean, std) is ev.make_forward(model.apply, mean, std)
    with pytest.raises(ValueError, match="uint8"):
        ev.predict_logits(model.apply, variables, images.astype(np.float32), mean=mean, std=std)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        ev.predict_logits(model.apply, variables, images[0], mean=mean, std=std)
    with pytest.raises(ValueError, match="channels"):
        ev.predict_logits(model.apply, variables, images, mean=(0.5, 0.5), std=std)


def test_softmax_rows_sum_to_one(data):
    logits, _ = data
    probs = ev.softmax(logits * 100)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(probs.argmax(1), logits.argmax(1))


def test_first_conv_kernel_and_activations():
    model = Tiny(num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    kernel = ev.first_conv_kernel(variables)
    assert kernel.shape == (3, 3, 3, 4)
    np.testing.assert_array_equal(kernel, variables["params"]["Conv_0"]["kernel"])
    # the kernel reading the image has the fewest input channels; ties go to natural order
    params = {"Conv_0": {"kernel": np.ones((3, 3, 8, 8))}, "Z": {"kernel": np.ones((5, 5, 3, 8))}}
    assert ev.first_conv_kernel(params).shape == (5, 5, 3, 8)
    params = {
        "Conv_10": {"kernel": np.ones((1, 1, 3, 2))},
        "Conv_2": {"kernel": np.ones((3, 3, 3, 2))},
    }
    assert ev.first_conv_kernel(params).shape == (3, 3, 3, 2)
    with pytest.raises(ValueError, match="no 4-D"):
        ev.first_conv_kernel({"params": {"Dense_0": {"kernel": np.ones((4, 2))}}})
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    acts = ev.conv_activations(model, variables, images, mean=0.5, std=0.25)
    assert list(acts) == ["Conv_0"] and acts["Conv_0"].shape == (2, 8, 8, 4)
    x = jnp.asarray((images / 255.0 - 0.5) / 0.25, jnp.float32)
    want = nn.Conv(4, (3, 3)).apply({"params": variables["params"]["Conv_0"]}, x)
    np.testing.assert_allclose(acts["Conv_0"], np.asarray(want), rtol=1e-5, atol=1e-5)


def test_conv_activations_capture_jaxcnn_conv_layers():
    """cnn3 uses layers.Conv (whichever kernels compute it), not nn.Conv: still captured."""
    from jaxcnn import models

    model = models.create("cnn3", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    acts = ev.conv_activations(model, variables, images, mean=0.5, std=0.25)
    assert len(acts) == 6
    first = next(iter(acts.values()))
    assert first.shape == (1, 32, 32, 32) and np.abs(first).max() > 0
    with pytest.raises(ValueError, match="no convolution"):
        ev.conv_activations(models.create("mlp", num_classes=10),
                            models.create("mlp", num_classes=10).init(
                                jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False),
                            images, mean=0.5, std=0.25)


def test_metrics_cover_every_class_even_when_absent():
    """Labels are passed to scikit-learn explicitly: a class that is never predicted and one
    that never occurs still get their row/column, with 0 (or NaN) where a ratio is undefined."""
    labels = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])  # class 2 absent from both, class 3 too (K = 4)
    cm = ev.confusion_matrix(pred, labels, 4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    precision, recall, f1, support = ev.precision_recall_f1(pred, labels, 4)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 0, 0])
    np.testing.assert_allclose(recall, [1 / 2, 2 / 3, 0, 0])
    np.testing.assert_allclose(f1, [1 / 2, 2 / 3, 0, 0])
    np.testing.assert_array_equal(support, [2, 3, 0, 0])
    acc = ev.per_class_accuracy(pred, labels, 4)
    np.testing.assert_allclose(acc[:2], [1 / 2, 2 / 3])
    assert np.isnan(acc[2:]).all()
    # one class in the data, K = 1 and K = 3: still (K, K), no warning about a single label
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(ev.confusion_matrix([0, 0], [0, 0], 1), [[2]])
        np.testing.assert_array_equal(ev.confusion_matrix([0, 0], [0, 0], 3)[0], [2, 0, 0])
        report = ev.classification_report([0, 0], [0, 0], num_classes=3)
    assert all(f"{c:>12}" in report for c in "012")
    # no example at all: an all-zero matrix
    np.testing.assert_array_equal(ev.confusion_matrix([], [], 2), np.zeros((2, 2)))


def test_top_k_edge_cases():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([2, 1, 0])  # ranks 2, 2, 3 (1-based)
    assert ev.top_k_accuracy(scores, labels, 1) == 0.0
    assert ev.top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k == K is exact, not scikit-learn's warning
        assert ev.top_k_accuracy(scores, labels, 3) == 1.0
    # two classes: scikit-learn's binary reading of the scores is avoided
    two = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert ev.top_k_accuracy(two, np.array([0, 1, 1]), 1) == pytest.approx(2 / 3)
    assert ev.top_k_accuracy(two, np.array([0, 1, 1]), 2) == 1.0
    assert ev.top_k_accuracy(two[:, :1], np.array([0, 0, 0]), 1) == 1.0  # K = 1
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
        ev.top_k_accuracy(scores, labels, 0)


def test_balanced_class_weights():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = ev.balanced_class_weights(labels, 4)  # n / (K * count); class 3 absent: 0
    np.testing.assert_allclose(w, [10 / 24, 10 / 12, 10 / 4, 0.0], rtol=1e-6)
    assert w.dtype == np.float32
    full = ev.balanced_class_weights(labels, 3)
    np.testing.assert_allclose(full[labels].mean(), 1.0, rtol=1e-6)
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(
        full, compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6
    )
    with pytest.raises(ValueError, match="lie in"):
        ev.balanced_class_weights(np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="empty"):
        ev.balanced_class_weights(np.array([], int), 3)


def test_evaluate_is_split_by_job_and_keeps_its_names():
    from jaxcnn.evaluate import inspection, metrics, prediction

    assert ev.predict_logits is prediction.predict_logits
    assert ev.confusion_matrix is metrics.confusion_matrix
    assert ev.first_conv_kernel is inspection.first_conv_kernel
    assert set(ev.__all__) == {*prediction.__all__, *metrics.__all__, *inspection.__all__}
