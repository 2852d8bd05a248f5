"""Figures of a training run's results: data, augmentation, curves, confusion, predictions,
mistakes, learned filters and feature maps.

Every function takes plain numpy-convertible data plus an output ``path``, writes one PNG there
(parent folders created, dpi 150, via :func:`jaxcnn.viz.style.save_figure`) and returns the
path. Nothing here trains or evaluates a model: the experiment computes the numbers (with
``jaxcnn.evaluate``) and hands them over, so a figure always shows what was measured.

Images are ``(N, H, W, C)`` with C = 1 or 3 (or ``(N, H, W)`` grayscale), uint8 in [0, 255] or
floats in [0, 1]. Labels are int ``(N,)``; ``probs`` are ``(N, K)`` probabilities; class names
are ``K`` strings.

Matplotlib is imported inside the functions (``import jaxcnn`` never loads it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxcnn.viz.style import hide_ticks, new_figure, save_figure

__all__ = [
    "augmentation_examples",
    "confident_mistakes",
    "confusion_matrix_plot",
    "feature_maps",
    "first_layer_filters",
    "per_class_accuracy_bars",
    "prediction_grid",
    "results_table_figure",
    "sample_grid",
    "training_curves",
]

GOOD = "#1a7f37"  # green: correct prediction
BAD = "#cf222e"  # red: wrong prediction
_CELL = 1.35  # inches per image cell in grids


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _images(images, name: str = "images") -> np.ndarray:
    """``(N, H, W, C)`` (C in 1, 3) or ``(N, H, W)`` -> displayable ``(N, H, W[, 3])`` array."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ValueError(
            f"{name} must have shape (N, H, W, C) with C in (1, 3) or (N, H, W), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 (0-255) or float (0-1), got dtype {arr.dtype}")


def _labels(labels, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} class names, "
            f"found values in [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int64)


def _names(class_names, num_classes: int | None = None) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty; pass one name per class")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"got {len(names)} class names for {num_classes} classes; pass one name per class"
        )
    return names


def _probs(probs, n: int, num_classes: int) -> np.ndarray:
    arr = np.asarray(probs, np.float64)
    if arr.shape != (n, num_classes):
        raise ValueError(
            f"probs must have shape (N, K) = ({n}, {num_classes}) to match the images and "
            f"class names, got {arr.shape}"
        )
    return arr


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return -(-n // ncols), ncols


def _show(ax, image) -> None:
    """Draw one image (gray colormap for 2-D) without ticks."""
    if image.ndim == 2:
        vmax = 255 if image.dtype == np.uint8 else 1.0
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    hide_ticks(ax)


def _image_grid(images, titles, colors, path, ncols: int, suptitle: str | None):
    n = len(images)
    rows, cols = _grid(n, ncols)
    fig, axes = new_figure(rows, cols, size=(cols * _CELL, rows * (_CELL + 0.25) + 0.4))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        if i < n:
            _show(ax, images[i])
            ax.set_title(titles[i], fontsize=7.5, color=colors[i], fontweight="normal")
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def sample_grid(
    images,
    labels,
    class_names: Sequence[str],
    path,
    n: int = 32,
    *,
    title: str = "Training images and their labels",
    ncols: int = 8,
) -> Path:
    """The first ``n`` images, each titled with its class name.

    Args:
      images: ``(N, H, W, C)`` / ``(N, H, W)``; labels: int ``(N,)``; class_names: ``K`` names.
    """
    imgs = _images(images)
    names = _names(class_names)
    y = _labels(labels, imgs.shape[0], len(names))
    n = min(_positive_int(n, "n"), imgs.shape[0])
    titles = [names[int(c)] for c in y[:n]]
    return _image_grid(imgs[:n], titles, ["black"] * n, path, ncols, title)


def augmentation_examples(
    images,
    augment_fn: Callable[[np.ndarray], np.ndarray],
    path,
    n_images: int = 4,
    n_variants: int = 6,
    *,
    title: str = "Data augmentation: one image, several random views",
) -> Path:
    """Each row: an original image, then ``n_variants`` augmented versions of it.

    ``augment_fn`` maps a uint8 batch ``(B, H, W, C)`` to an augmented batch of the same shape
    (e.g. ``lambda x: jaxcnn.data.augment(key, x)``). It is called once on a batch holding
    ``n_variants`` copies of each image, so per-example randomness gives different views.
    """
    if not callable(augment_fn):
        raise ValueError(f"augment_fn must be callable (uint8 batch -> batch), got {augment_fn!r}")
    raw = np.asarray(images)
    if raw.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {raw.shape}")
    n_images = min(_positive_int(n_images, "n_images"), raw.shape[0])
    n_variants = _positive_int(n_variants, "n_variants")
    originals = raw[:n_images]
    batch = np.repeat(originals, n_variants, axis=0)
    out = np.asarray(augment_fn(batch))
    if out.shape[0] != batch.shape[0] or out.shape[-1] != batch.shape[-1]:
        raise ValueError(
            f"augment_fn returned shape {out.shape} for a batch of shape {batch.shape}; it must "
            "return one image per input image with the same channels"
        )
    originals, out = _images(originals), _images(out, "augment_fn output")
    cols = n_variants + 1
    fig, axes = new_figure(
        n_images, cols, size=(cols * _CELL, n_images * _CELL + 0.6), squeeze=False
    )
    for r in range(n_images):
        _show(axes[r, 0], originals[r])
        for v in range(n_variants):
            _show(axes[r, v + 1], out[r * n_variants + v])
    axes[0, 0].set_title("original", fontsize=9)
    for v in range(n_variants):
        axes[0, v + 1].set_title(f"view {v + 1}", fontsize=9, fontweight="normal")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _series(history: Sequence[Mapping], key: str):
    xs, ys = [], []
    for i, rec in enumerate(history):
        v = rec.get(key)
        if v is not None and np.isfinite(v):
            xs.append(rec.get("epoch", i + 1))
            ys.append(float(v))
    return xs, ys


def training_curves(
    histories: Mapping[str, Sequence[Mapping]],
    path,
    *,
    title: str = "Training curves",
) -> Path:
    """Loss and accuracy against epoch for several models (train solid, eval dashed).

    Args:
      histories: ``{model_name: [record, ...]}`` with one record per epoch holding ``epoch`` and
        any of ``train_loss``, ``eval_loss``, ``train_accuracy``, ``eval_accuracy`` (fractions)
        and ``lr``. Missing values are skipped; a learning-rate panel is added when ``lr`` is
        present.
    """
    import matplotlib.ticker as mticker

    if not isinstance(histories, Mapping) or not histories:
        raise ValueError(
            "histories must be a non-empty dict {model_name: [{'epoch': ..., 'train_loss': ...}]}"
        )
    for name, hist in histories.items():
        if isinstance(hist, Mapping) or not all(isinstance(r, Mapping) for r in hist):
            raise ValueError(f"histories[{name!r}] must be a list of per-epoch dicts")
    has_lr = any(_series(h, "lr")[0] for h in histories.values())
    panels = 3 if has_lr else 2
    fig, axes = new_figure(1, panels, size=(5.2 * panels, 4.0))
    colors = [f"C{i}" for i in range(len(histories))]
    for color, (name, hist) in zip(colors, histories.items(), strict=True):
        for ax, metric in zip(axes[:2], ("loss", "accuracy"), strict=True):
            for split, style in (("train", "-"), ("eval", "--")):
                xs, ys = _series(hist, f"{split}_{metric}")
                if xs:
                    ax.plot(
                        xs,
                        ys,
                        style,
                        color=color,
                        marker="o",
                        markersize=2.5,
                        label=f"{name} {split}",
                    )
        if has_lr:
            xs, ys = _series(hist, "lr")
            if xs:
                axes[2].plot(xs, ys, color=color, label=name)
    axes[0].set_title("Loss")
    axes[0].set_ylabel("cross-entropy")
    axes[1].set_title("Accuracy")
    axes[1].yaxis.set_major_formatter(mticker.PercentFormatter(1.0))
    if has_lr:
        axes[2].set_title("Learning rate")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


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
    names = _names(class_names, cm.shape[0])
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
    names = _names(class_names)
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
    imgs = _images(images)
    names = _names(class_names)
    y = _labels(labels, imgs.shape[0], len(names))
    p = _probs(probs, imgs.shape[0], len(names))
    n = min(_positive_int(n, "n"), imgs.shape[0])
    pred = p.argmax(axis=1)
    titles, colors = [], []
    for i in range(n):
        ok = pred[i] == y[i]
        text = f"{names[pred[i]]} {p[i, pred[i]]:.0%}"
        titles.append(text if ok else f"{text}\n(true: {names[y[i]]})")
        colors.append(GOOD if ok else BAD)
    return _image_grid(imgs[:n], titles, colors, path, ncols, title)


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

    imgs = _images(images)
    names = _names(class_names)
    y = _labels(labels, imgs.shape[0], len(names))
    p = _probs(probs, imgs.shape[0], len(names))
    idx = most_confident_mistakes(p, y, _positive_int(k, "k"))
    if idx.size == 0:
        fig, ax = new_figure(size=(5, 2))
        ax.text(0.5, 0.5, "No mistakes: every prediction is correct", ha="center", va="center")
        ax.axis("off")
        ax.set_title(title)
        return save_figure(fig, path)
    pred = p.argmax(axis=1)
    titles = [f"{names[pred[i]]} {p[i, pred[i]]:.0%}\ntrue: {names[y[i]]}" for i in idx]
    return _image_grid(imgs[idx], titles, [BAD] * idx.size, path, ncols, title)


# --------------------------------------------------------------------------------------------
# Inside the network
# --------------------------------------------------------------------------------------------


def first_layer_filters(
    kernel,
    path,
    *,
    title: str | None = None,
    max_filters: int = 64,
    ncols: int = 8,
) -> Path:
    """The first convolution's filters as small images.

    Args:
      kernel: ``(kh, kw, C_in, C_out)`` (HWIO). Each filter is min-max normalised to [0, 1] on
        its own. With ``C_in == 3`` a filter is shown in colour (the RGB pattern it responds
        to most); otherwise the mean over input channels is shown in gray.
      max_filters: show at most this many (the first ones).
    """
    w = np.asarray(kernel, np.float32)
    if w.ndim != 4:
        raise ValueError(f"kernel must have shape (kh, kw, C_in, C_out) (HWIO), got {w.shape}")
    kh, kw, cin, cout = w.shape
    n = min(cout, _positive_int(max_filters, "max_filters"))
    filters = np.moveaxis(w, -1, 0)[:n]  # (n, kh, kw, cin)
    filters = filters if cin == 3 else filters.mean(axis=-1)
    lo = filters.reshape(n, -1).min(axis=1)
    hi = filters.reshape(n, -1).max(axis=1)
    shape = (n,) + (1,) * (filters.ndim - 1)
    span = np.where(hi > lo, hi - lo, 1.0).reshape(shape)
    filters = (filters - lo.reshape(shape)) / span
    rows, cols = _grid(n, ncols)
    cell = 0.9
    fig, axes = new_figure(rows, cols, size=(cols * cell, rows * cell + 0.5), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i < n:
            _show(ax, filters[i])
        else:
            ax.axis("off")
    if title is None:
        colour = "RGB" if cin == 3 else f"mean of {cin} input channels"
        title = f"First-layer filters ({n} of {cout}, {kh}x{kw}, {colour})"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def feature_maps(
    maps,
    path,
    max_maps: int = 32,
    title: str = "Feature maps",
    *,
    image=None,
    ncols: int = 8,
) -> Path:
    """Activations of one layer for one image, one panel per channel (each scaled on its own).

    Args:
      maps: ``(H, W, C)`` activations (a leading batch axis of 1 is accepted).
      max_maps: show at most this many channels (the first ones).
      image: optional input image ``(H0, W0, C0)`` drawn in the first panel.
    """
    a = np.asarray(maps, np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"maps must have shape (H, W, C) for one image, got {a.shape}")
    c = a.shape[-1]
    n = min(c, _positive_int(max_maps, "max_maps"))
    panels = n + (image is not None)
    rows, cols = _grid(panels, ncols)
    fig, axes = new_figure(rows, cols, size=(cols * 1.2, rows * 1.3 + 0.5), squeeze=False)
    axes = axes.ravel()
    start = 0
    if image is not None:
        _show(axes[0], _images(np.asarray(image)[None], "image")[0])
        axes[0].set_title("input", fontsize=8)
        start = 1
    for i in range(n):
        ax = axes[start + i]
        ax.imshow(a[..., i], cmap="viridis", interpolation="nearest")
        hide_ticks(ax)
        ax.set_title(f"ch {i}", fontsize=7, fontweight="normal")
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(f"{title} ({n} of {c} channels, {a.shape[0]}x{a.shape[1]})", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def results_table_figure(
    rows: Sequence[Mapping],
    path,
    *,
    columns: Sequence[str] | None = None,
    title: str = "Results",
) -> Path:
    """A results table as an image (e.g. model, test accuracy, params, train time).

    Args:
      rows: one dict per row; columns default to the keys of the first row, in order. Floats in
        [0, 1] under a key containing ``accuracy`` are shown as percentages; other floats with
        4 significant digits; ints with thousands separators.
    """
    if isinstance(rows, Mapping) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts, one per table row")
    columns = list(columns) if columns is not None else list(rows[0])
    if not columns:
        raise ValueError("the table has no columns; pass columns=[...] or non-empty rows")

    def fmt(key, v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int | np.integer):
            return f"{int(v):,}"
        if isinstance(v, float | np.floating):
            if not math.isfinite(v):
                return str(v)
            if "acc" in key.lower() and 0.0 <= v <= 1.0:
                return f"{v:.2%}"
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    fig_w = max(4.0, 0.11 * sum(widths) + 0.4 * len(columns))
    fig, ax = new_figure(size=(fig_w, 0.38 * (len(rows) + 1) + 0.8))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.4)
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#e8eef7")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
