"""jaxcnn.viz.results: every figure writes a valid PNG; bad input raises a clear ValueError."""

import numpy as np
import pytest
from PIL import Image

from jaxcnn.viz import results as vr

K = 4
NAMES = ["cat", "dog", "frog", "ship"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 20
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return images, labels, probs


def _check_png(path, min_size=100):
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        w, h = img.size
    assert min_size <= w <= 6000 and min_size <= h <= 6000, (w, h)
    return w, h


def test_sample_grid(tmp_path, data):
    images, labels, _ = data
    _check_png(vr.sample_grid(images, labels, NAMES, tmp_path / "deep" / "samples.png", n=12))
    gray = images[..., 0]  # (N, H, W) grayscale works too
    _check_png(vr.sample_grid(gray, labels, NAMES, tmp_path / "gray.png", n=5))
    with pytest.raises(ValueError, match="class names|must lie in"):
        vr.sample_grid(images, labels, NAMES[:2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        vr.sample_grid(images, labels[:3], NAMES, tmp_path / "x.png")


def test_augmentation_examples(tmp_path, data):
    images = data[0]

    def flip_some(batch):  # a deterministic "augmentation": flip every other image
        out = batch.copy()
        out[::2] = out[::2, :, ::-1]
        return out

    w, h = _check_png(vr.augmentation_examples(images, flip_some, tmp_path / "aug.png", 3, 4))
    assert w > h  # 5 columns, 3 rows
    with pytest.raises(ValueError, match="augment_fn returned"):
        vr.augmentation_examples(images, lambda b: b[:1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="callable"):
        vr.augmentation_examples(images, None, tmp_path / "x.png")


def test_training_curves(tmp_path):
    def hist(scale):
        return [
            dict(
                epoch=e,
                train_loss=2 / e * scale,
                train_accuracy=0.5 + 0.04 * e,
                eval_loss=2.2 / e * scale,
                eval_accuracy=0.45 + 0.04 * e,
                lr=0.1 / e,
            )
            for e in range(1, 6)
        ]

    histories = {"mlp": hist(1.2), "cnn3": hist(1.0)}
    w, _ = _check_png(vr.training_curves(histories, tmp_path / "curves.png"))
    no_eval = {"cnn3": [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.8}]}
    w2, _ = _check_png(vr.training_curves(no_eval, tmp_path / "curves2.png"))
    assert w > w2  # the learning-rate panel is drawn only when lr is logged
    with pytest.raises(ValueError, match="non-empty dict"):
        vr.training_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="per-epoch dicts"):
        vr.training_curves({"m": [1, 2]}, tmp_path / "x.png")


def test_confusion_and_per_class(tmp_path, data):
    _, labels, probs = data
    from jaxcnn.evaluate import confusion_matrix, per_class_accuracy

    cm = confusion_matrix(probs, labels, K)
    _check_png(vr.confusion_matrix_plot(cm, NAMES, tmp_path / "cm.png"))
    _check_png(vr.confusion_matrix_plot(cm, NAMES, tmp_path / "cm_counts.png", normalize=False))
    with pytest.raises(ValueError, match="class names"):
        vr.confusion_matrix_plot(cm, NAMES + ["extra"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        vr.confusion_matrix_plot(cm[:2], NAMES, tmp_path / "x.png")

    acc = per_class_accuracy(probs, labels, K)
    bars = {"mlp": acc, "cnn3": np.clip(acc + 0.2, 0, 1)}
    _check_png(vr.per_class_accuracy_bars(bars, NAMES, tmp_path / "bars.png"))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        vr.per_class_accuracy_bars(bars, NAMES[:3], tmp_path / "x.png")


def test_predictions_and_mistakes(tmp_path, data):
    images, labels, probs = data
    _check_png(vr.prediction_grid(images, labels, probs, NAMES, tmp_path / "pred.png", n=10))
    _check_png(vr.confident_mistakes(images, labels, probs, NAMES, tmp_path / "mist.png", k=6))
    perfect = np.eye(K)[labels]
    _check_png(vr.confident_mistakes(images, labels, perfect, NAMES, tmp_path / "none.png"))
    with pytest.raises(ValueError, match="probs must have shape"):
        vr.prediction_grid(images, labels, probs[:, :3], NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match="class names"):
        vr.prediction_grid(images, labels, probs, ["a"] * 5, tmp_path / "x.png")


def test_filters_and_feature_maps(tmp_path):
    rng = np.random.default_rng(1)
    _check_png(vr.first_layer_filters(rng.normal(size=(3, 3, 3, 32)), tmp_path / "f.png"))
    _check_png(vr.first_layer_filters(rng.normal(size=(5, 5, 1, 6)), tmp_path / "f1.png"))
    _check_png(vr.first_layer_filters(np.zeros((3, 3, 3, 4)), tmp_path / "flat.png"))
    with pytest.raises(ValueError, match="HWIO"):
        vr.first_layer_filters(np.zeros((3, 3, 3)), tmp_path / "x.png")
    maps = rng.normal(size=(8, 8, 40))
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _check_png(vr.feature_maps(maps, tmp_path / "maps.png", max_maps=16, image=img))
    _check_png(vr.feature_maps(maps[None, ..., :3], tmp_path / "maps3.png"))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        vr.feature_maps(np.zeros((2, 8, 8, 4)), tmp_path / "x.png")


def test_results_table(tmp_path):
    rows = [
        {"model": "mlp", "test_accuracy": 0.5312, "params": 1_707_274, "train_s": 120.5},
        {"model": "cnn3", "test_accuracy": 0.8841, "params": 551_466, "train_s": 3605.0},
    ]
    _check_png(vr.results_table_figure(rows, tmp_path / "table.png"))
    with pytest.raises(ValueError, match="non-empty list"):
        vr.results_table_figure([], tmp_path / "x.png")


@pytest.mark.parametrize(("normalize", "label"), [(True, "fraction of the true class"),
                                                  (False, "images")])
def test_confusion_matrix_colour_bar_is_labelled(tmp_path, data, monkeypatch, normalize, label):
    from jaxcnn.evaluate import confusion_matrix
    from jaxcnn.viz import style

    _, labels, probs = data
    figures = []

    def keep(fig, path, **kw):
        figures.append(fig)
        return style.save_figure(fig, path, **kw)

    from jaxcnn.viz import evaluation  # where confusion_matrix_plot lives

    monkeypatch.setattr(evaluation, "save_figure", keep)
    cm = confusion_matrix(probs, labels, K)
    _check_png(vr.confusion_matrix_plot(cm, NAMES, tmp_path / "cm.png", normalize=normalize))
    (fig,) = figures
    bar_axes = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bar_axes) == 1
    assert bar_axes[0].get_ylabel() == label
