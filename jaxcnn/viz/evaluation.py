"""Figures of an evaluation: confusion matrix, per-class accuracy, predictions and the most
confident mistakes.

Each function writes one PNG to ``path`` (see :mod:`jaxcnn.viz.results`) and returns the path;
the numbers come from :mod:`jaxcnn.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxcnn.viz._common import BAD, GOOD, as_names, image_grid, labelled, positive_int
from jaxcnn.viz.style import new_figure, save_figure

__all__ = [
    "confident_mistakes",
    "confusion_matrix_plot",
    "per_class_accuracy_bars",
    "prediction_grid",
]


def confusion_matrix_plot(
    cm,
    class_names: Sequence[str],
    path,
    normalize: bool = True,
    *,
    title: str | None = None,
) -> Path:
    """A confusion matrix heat map, rows = true class, columns = predicted class.

    Args:
      cm: ``(K, K)`` counts (``jaxcnn.evaluate.confusion_matrix``).
      normalize: show each row as fractions of that true class (cells annotated in %; the
        colour bar labelled "fraction of the true class"); otherwise raw counts ("images").
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {cm.shape}")
    names = as_names(class_names, cm.shape[0])
    k = len(names)
    if normalize:
        rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
        values = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
        vmax = 1.0
    else:
        values = cm.astype(np.float64)
        vmax = max(float(values.max()), 1.0)
    side = max(4.5, 0.55 * k + 2.0)
    fig, ax = new_figure(size=(side + 1.0, side))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("fraction of the true class" if normalize else "images")
    if k <= 25:
        for t in range(k):
            for p in range(k):
                v = values[t, p]
                text = f"{100 * v:.0f}" if normalize else f"{int(cm[t, p])}"
                ax.text(
                    p,
                    t,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7 if k > 12 else 8,
                    color="white" if v > 0.6 * vmax else "black",
                )
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title is None:
        title = "Confusion matrix (% of each true class)" if normalize else "Confusion matrix"
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_accuracy_bars(
    acc_by_model: Mapping[str, Sequence[float]],
    class_names: Sequence[str],
    path,
    *,
    title: str = "Accuracy per class",
) -> Path:
    """Grouped bars: for each class, one bar per model (accuracies as fractions, NaN skipped).

    Args:
      acc_by_model: ``{model_name: (K,) per-class accuracy}``
        (``jaxcnn.evaluate.per_class_accuracy``).
    """
    import matplotlib.ticker as mticker

    if not isinstance(acc_by_model, Mapping) or not acc_by_model:
        raise ValueError("acc_by_model must be a non-empty dict {model_name: (K,) accuracies}")
    names = as_names(class_names)
    k = len(names)
    accs = {}
    for model, acc in acc_by_model.items():
        arr = np.asarray(acc, np.float64)
        if arr.shape != (k,):
            raise ValueError(
                f"acc_by_model[{model!r}] has shape {arr.shape}, expected ({k},) to match "
                f"{k} class names"
            )
        accs[model] = arr
    m = len(accs)
    width = 0.8 / m
    fig, ax = new_figure(size=(max(6.0, 0.75 * k * max(1, m / 2) + 2), 4.2))
    x = np.arange(k)
    for i, (model, arr) in enumerate(accs.items()):
        mean = np.nanmean(arr) if np.any(np.isfinite(arr)) else float("nan")
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            np.nan_to_num(arr),
            width,
            label=f"{model} (mean {mean:.1%})",
            color=f"C{i}",
        )
    ax.set_xticks(x, names, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylim(0, 1.2)  # headroom above 100% for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(mticker.PercentFormatter(1.0))
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=min(m, 4), frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def prediction_grid(
    images,
    labels,
    probs,
    class_names: Sequence[str],
    path,
    n: int = 24,
    title: str = "Predictions (green: correct, red: wrong)",
    *,
    ncols: int = 8,
) -> Path:
    """The first ``n`` images titled with prediction and confidence, green if right, red if
    wrong (wrong ones also show the true class).

    Args:
      images: ``(N, H, W, C)``; labels: int ``(N,)``; probs: ``(N, K)``; class_names: ``K``.
    """
    imgs, y, names, p = labelled(images, labels, class_names, probs)
    n = min(positive_int(n, "n"), imgs.shape[0])
    pred = p.argmax(axis=1)
    titles, colors = [], []
    for i in range(n):
        ok = pred[i] == y[i]
        text = f"{names[pred[i]]} {p[i, pred[i]]:.0%}"
        titles.append(text if ok else f"{text}\n(true: {names[y[i]]})")
        colors.append(GOOD if ok else BAD)
    return image_grid(imgs[:n], titles, colors, path, ncols, title)


def confident_mistakes(
    images,
    labels,
    probs,
    class_names: Sequence[str],
    path,
    k: int = 16,
    *,
    title: str = "Most confident mistakes",
    ncols: int = 8,
) -> Path:
    """The ``k`` wrong predictions with the highest confidence, most confident first.

    Each image is titled ``predicted confidence`` (red) and ``true: class``. When the model
    made no mistakes the figure says so.
    """
    from jaxcnn.evaluate import most_confident_mistakes

    imgs, y, names, p = labelled(images, labels, class_names, probs)
    idx = most_confident_mistakes(p, y, positive_int(k, "k"))
    if idx.size == 0:
        fig, ax = new_figure(size=(5, 2))
        ax.text(0.5, 0.5, "No mistakes: every prediction is correct", ha="center", va="center")
        ax.axis("off")
        ax.set_title(title)
        return save_figure(fig, path)
    pred = p.argmax(axis=1)
    titles = [f"{names[pred[i]]} {p[i, pred[i]]:.0%}\ntrue: {names[y[i]]}" for i in idx]
    return image_grid(imgs[idx], titles, [BAD] * idx.size, path, ncols, title)
