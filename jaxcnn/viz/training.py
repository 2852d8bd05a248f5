"""Figures of training runs: loss / accuracy / learning-rate curves and the results table.

Each function writes one PNG to ``path`` (see :mod:`jaxcnn.viz.results`) and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxcnn.viz.style import new_figure, save_figure

__all__ = ["results_table_figure", "training_curves"]


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
