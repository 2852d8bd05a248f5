"""Figures for the first lessons: pixels, filters, stride/padding, pooling, receptive fields,
parameter counts, and the from-scratch CNN on handwritten digits.

Each function takes plain numpy-convertible arrays, builds one matplotlib figure and returns it;
the caller saves it with :func:`jaxcnn.viz.style.save_figure`. Nothing here computes a
convolution: the experiments do the maths with ``jaxcnn.ops`` and hand the results over, so a
figure can never disagree with the numbers the experiment prints.

Matplotlib is imported inside the functions (``import jaxcnn`` never loads it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxcnn.viz.style import CMAP_IMAGE, CMAP_SIGNED, grid_shape, hide_ticks, new_figure


def _signed_limits(a: np.ndarray) -> tuple[float, float]:
    m = float(np.max(np.abs(a))) or 1.0
    return -m, m


# --------------------------------------------------------------------------------------------
# conv_math: pixels and channels
# --------------------------------------------------------------------------------------------


def image_channels(image: np.ndarray, title: str = "An image is three stacked grids of numbers"):
    """The RGB photo and its red, green and blue channels. ``image: (H, W, 3)`` uint8."""
    image = np.asarray(image)
    fig, axes = new_figure(1, 4, size=(12, 3.6))
    axes[0].imshow(image)
    axes[0].set_title(f"RGB photo {image.shape[0]}x{image.shape[1]}x{image.shape[2]}")
    for c, (name, cmap) in enumerate([("Red", "Reds_r"), ("Green", "Greens_r"),
                                      ("Blue", "Blues_r")]):
        im = axes[c + 1].imshow(image[..., c], cmap=cmap, vmin=0, vmax=255)
        axes[c + 1].set_title(f"{name} channel [:, :, {c}]")
        fig.colorbar(im, ax=axes[c + 1], fraction=0.046, pad=0.03).set_label("pixel value")
    for ax in axes:
        hide_ticks(ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pixel_patch(image: np.ndarray, top: int, left: int, size: int = 8):
    """The photo with a box, and that ``size`` x ``size`` patch zoomed in with every grey value
    written in its cell. ``image: (H, W)`` uint8 (grayscale)."""
    import matplotlib.patches as mpatches

    image = np.asarray(image)
    patch = image[top:top + size, left:left + size]
    fig, axes = new_figure(1, 2, size=(12, 5.6), gridspec_kw={"width_ratios": [1, 1.1]})
    axes[0].imshow(image, cmap=CMAP_IMAGE, vmin=0, vmax=255)
    axes[0].add_patch(mpatches.Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                                         edgecolor="red", linewidth=2))
    axes[0].set_title(f"Grayscale {image.shape[0]}x{image.shape[1]}, red box = patch")
    hide_ticks(axes[0])
    axes[1].imshow(patch, cmap=CMAP_IMAGE, vmin=0, vmax=255)
    for i in range(patch.shape[0]):
        for j in range(patch.shape[1]):
            v = int(patch[i, j])
            axes[1].text(j, i, str(v), ha="center", va="center", fontsize=9,
                         color="black" if v > 110 else "white")
    axes[1].set_xticks(range(patch.shape[1]), [str(left + j) for j in range(patch.shape[1])])
    axes[1].set_yticks(range(patch.shape[0]), [str(top + i) for i in range(patch.shape[0])])
    axes[1].set_xlabel("column (W axis)")
    axes[1].set_ylabel("row (H axis)")
    axes[1].set_title(f"Zoomed {size}x{size} patch: uint8 values 0 (black) .. 255 (white)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# conv_math: convolution, stride, padding, pooling
# --------------------------------------------------------------------------------------------


def filter_bank(image: np.ndarray, kernels: Mapping[str, np.ndarray],
                feature_maps: Mapping[str, np.ndarray], ncols: int = 5):
    """Each classic kernel (numbers written in) above the feature map it produces.

    ``image: (H, W)``; ``kernels[name]: (kh, kw)``; ``feature_maps[name]: (H', W')``.
    """
    names = list(kernels)
    n = len(names) + 1
    nrows, ncols = grid_shape(n, ncols)
    fig, axes = new_figure(2 * nrows, ncols, size=(2.5 * ncols, 4.0 * nrows),
                           gridspec_kw={"height_ratios": [1, 2.4] * nrows})
    axes = np.asarray(axes).reshape(2 * nrows, ncols)
    for ax in axes.ravel():
        ax.axis("off")
    for idx in range(n):
        r, c = divmod(idx, ncols)
        kax, max_ = axes[2 * r, c], axes[2 * r + 1, c]
        if idx == 0:
            kax.text(0.5, 0.5, "input\n(no kernel)", ha="center", va="center", fontsize=11,
                     transform=kax.transAxes)
            max_.imshow(image, cmap=CMAP_IMAGE)
            max_.set_title("grayscale input")
            max_.axis("on")
            hide_ticks(max_)
            continue
        name = names[idx - 1]
        k = np.asarray(kernels[name], dtype=np.float64)
        lo, hi = _signed_limits(k)
        kax.imshow(k, cmap=CMAP_SIGNED, vmin=lo, vmax=hi)
        if k.shape[0] <= 5:
            for i in range(k.shape[0]):
                for j in range(k.shape[1]):
                    v = k[i, j]
                    txt = f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}".rstrip("0")
                    kax.text(j, i, txt, ha="center", va="center", fontsize=7,
                             color="white" if abs(v) > 0.6 * hi else "black")
        kax.set_title(name, fontsize=10)
        kax.axis("on")
        hide_ticks(kax)
        fmap = np.asarray(feature_maps[name])
        if abs(float(k.sum())) < 1e-6:  # responds to change only: signed, clipped for contrast
            m = float(np.percentile(np.abs(fmap), 99.5)) or 1.0
            max_.imshow(fmap, cmap=CMAP_SIGNED, vmin=-m, vmax=m)
            kind = "signed"
        else:  # keeps brightness: show it as an image
            lo, hi = np.percentile(fmap, [0.5, 99.5])
            max_.imshow(fmap, cmap=CMAP_IMAGE, vmin=lo, vmax=hi)
            kind = "gray"
        max_.set_title(f"feature map {fmap.shape[0]}x{fmap.shape[1]} ({kind})", fontsize=9)
        max_.axis("on")
        hide_ticks(max_)
    fig.suptitle("Classic filters slid over the photo (cross-correlation, VALID padding)\n"
                 "zero-sum kernels (edges): red = positive, blue = negative response; "
                 "others shown in gray")
    fig.tight_layout()
    return fig


def stride_padding(results: Sequence[tuple[str, np.ndarray]], input_shape: tuple[int, int],
                   ncols: int = 3):
    """One feature map per (stride, padding) setting, all drawn at the same scale, so the
    shrinking grid is visible. ``results``: ``(label, map (H', W'))`` pairs."""
    n = len(results)
    nrows, ncols = grid_shape(n, ncols)
    fig, axes = new_figure(nrows, ncols, size=(4.2 * ncols, 4.4 * nrows), squeeze=False)
    H, W = input_shape
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, fmap) in zip(axes.ravel(), results, strict=False):
        fmap = np.asarray(fmap)
        lo, hi = _signed_limits(fmap)
        # extent in *input* pixels: each output cell covers stride input pixels
        ax.imshow(fmap, cmap=CMAP_SIGNED, vmin=lo, vmax=hi, extent=(0, W, H, 0))
        ax.set_title(f"{label}\noutput {fmap.shape[0]}x{fmap.shape[1]}", fontsize=10)
        ax.axis("on")
        hide_ticks(ax)
    fig.suptitle(f"Same Sobel-x filter on a {H}x{W} input: stride s divides the output size by "
                 "about s;\nSAME pads zeros to keep the size (note the false edge the zero border "
                 "makes on the right)")
    fig.tight_layout()
    return fig


def pooling(feature_map: np.ndarray, pooled: Mapping[str, np.ndarray],
            global_values: Mapping[str, float]):
    """The feature map beside its max/avg/min pooled versions (one colour scale), with the
    global poolings written underneath.

    ``feature_map: (H, W)``; ``pooled[name]: (H', W')``; ``global_values[name]``: scalar.
    """
    n = len(pooled) + 1
    fig, axes = new_figure(1, n, size=(3.9 * n, 5.0))
    fmap = np.asarray(feature_map)
    lo, hi = float(fmap.min()), float(fmap.max())
    im = axes[0].imshow(fmap, cmap="magma", vmin=lo, vmax=hi)
    axes[0].set_title(f"feature map {fmap.shape[0]}x{fmap.shape[1]}")
    for ax, (name, p) in zip(axes[1:], pooled.items(), strict=False):
        p = np.asarray(p)
        ax.imshow(p, cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(f"{name} -> {p.shape[0]}x{p.shape[1]}")
    for ax in axes:
        hide_ticks(ax)
    fig.colorbar(im, ax=list(axes), fraction=0.015, pad=0.01).set_label("activation")
    glob = ";   ".join(f"{k} = {v:.3f}" for k, v in global_values.items())
    fig.text(0.45, 0.02, f"Global pooling (whole map -> one number per channel):   {glob}",
             ha="center", fontsize=11)
    fig.suptitle("Pooling on one colour scale: max keeps the peaks, average smooths, "
                 "min keeps the troughs")
    return fig


def receptive_field(layer_names: Sequence[str], rf_sizes: Sequence[int],
                    image: np.ndarray, centre: tuple[float, float],
                    boxes: Sequence[tuple[str, float, float, int]]):
    """Left: receptive-field size after each layer. Right: nested boxes on the image showing
    what one output unit of selected layers sees.

    ``boxes``: ``(label, top, left, size)`` in input pixels.
    """
    import matplotlib.patches as mpatches

    fig, axes = new_figure(1, 2, size=(14, 5.6), gridspec_kw={"width_ratios": [1.3, 1]})
    x = np.arange(len(rf_sizes))
    axes[0].plot(x, rf_sizes, "o-", color="tab:blue", linewidth=2)
    for xi, r in zip(x, rf_sizes, strict=True):
        axes[0].annotate(str(r), (xi, r), textcoords="offset points", xytext=(0, 7),
                         ha="center", fontsize=9)
    axes[0].set_xticks(x, layer_names, rotation=45, ha="right")
    axes[0].set_ylabel("receptive field (input pixels per side)")
    axes[0].set_title("Receptive field grows with depth; pooling multiplies later growth")
    axes[0].grid(alpha=0.3)
    axes[1].imshow(image, cmap=CMAP_IMAGE)
    colours = ["#ffdd00", "#ff8800", "#ff0044", "#cc00ff", "#00ccff", "#00ff66"]
    for (label, top, left, size), col in zip(boxes, colours * 4, strict=False):
        axes[1].add_patch(mpatches.Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                                             edgecolor=col, linewidth=2, label=label))
    axes[1].plot([centre[1]], [centre[0]], "+", color="white", markersize=10)
    axes[1].set_xlim(-0.5, image.shape[1] - 0.5)
    axes[1].set_ylim(image.shape[0] - 0.5, -0.5)
    axes[1].legend(loc="lower right", fontsize=8, framealpha=0.8)
    axes[1].set_title("What one output unit sees, layer by layer")
    hide_ticks(axes[1])
    fig.tight_layout()
    return fig


def param_counts(rows: Sequence[tuple[str, str, int]]):
    """Grouped bar chart on a log scale. ``rows``: ``(input label, layer label, count)``."""
    groups = list(dict.fromkeys(r[0] for r in rows))
    layers = list(dict.fromkeys(r[1] for r in rows))
    table = {(g, lay): c for g, lay, c in rows}
    fig, ax = new_figure(1, 1, size=(11, 5.4))
    width = 0.8 / len(layers)
    x = np.arange(len(groups))
    cmap = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for i, lay in enumerate(layers):
        vals = [table.get((g, lay), 0) for g in groups]
        bars = ax.bar(x + (i - (len(layers) - 1) / 2) * width, vals, width, label=lay,
                      color=cmap[i % len(cmap)])
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:,}", (b.get_x() + b.get_width() / 2, v), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=8, rotation=0)
    ax.set_yscale("log")
    ax.set_ylim(bottom=100)
    ax.set_xticks(x, groups)
    ax.set_ylabel("trainable parameters (log scale)")
    ax.set_title("One dense layer vs one conv layer: weight sharing makes conv params "
                 "independent of image size")
    ax.legend(fontsize=9, loc="upper right")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def worked_example(image: np.ndarray, kernel: np.ndarray, output: np.ndarray,
                   note: str = ""):
    """Input grid, kernel and output grid with every number written in."""
    fig, axes = new_figure(1, 3, size=(12, 4.2),
                           gridspec_kw={"width_ratios": [5, 3.4, 3.4]})
    for ax, a, title, cmap in [
        (axes[0], image, "input 5x5", CMAP_IMAGE),
        (axes[1], kernel, "vertical-edge kernel 3x3", CMAP_SIGNED),
        (axes[2], output, "output 3x3 (VALID)", "magma"),
    ]:
        a = np.asarray(a, dtype=np.float64)
        lo, hi = _signed_limits(a) if cmap == CMAP_SIGNED else (a.min(), a.max() or 1)
        ax.imshow(a, cmap=cmap, vmin=lo, vmax=hi)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                ax.text(j, i, f"{a[i, j]:g}", ha="center", va="center", fontsize=12,
                        color="black", bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7,
                                             "lw": 0})
        ax.set_title(title)
        hide_ticks(ax)
    import matplotlib.patches as mpatches

    # the window that produces output cell (0, 1)
    axes[0].add_patch(mpatches.Rectangle((0.5, -0.5), 3, 3, fill=False, edgecolor="tab:red",
                                         linewidth=3, label="window of output (0, 1)"))
    axes[2].add_patch(mpatches.Rectangle((0.5, -0.5), 1, 1, fill=False, edgecolor="tab:red",
                                         linewidth=3))
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=9, frameon=False)
    if note:
        fig.text(0.5, -0.06, note, ha="center", va="top", fontsize=10)
    fig.suptitle("Worked example: one multiply-accumulate per output cell")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# from_scratch: the digits CNN
# --------------------------------------------------------------------------------------------


def learned_filters(kernels: np.ndarray, title: str = "Learned first-layer filters"):
    """``kernels: (kh, kw, 1, C_out)`` (HWIO, one input channel) drawn as a grid."""
    k = np.asarray(kernels)[:, :, 0, :]
    n = k.shape[-1]
    nrows, ncols = grid_shape(n, 8)
    fig, axes = new_figure(nrows, ncols, size=(1.6 * ncols, 1.8 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        lo, hi = _signed_limits(k[..., i])
        ax.imshow(k[..., i], cmap=CMAP_SIGNED, vmin=lo, vmax=hi)
        ax.set_title(f"#{i}", fontsize=9)
        ax.axis("on")
        hide_ticks(ax)
    fig.suptitle(title + "\n(red = positive weight, blue = negative)")
    fig.tight_layout()
    return fig


def feature_maps(digit: np.ndarray, stages: Mapping[str, np.ndarray], label: str = "",
                 max_maps: int = 16):
    """A digit and the activation maps after each stage. ``digit: (H, W)``;
    ``stages[name]: (H', W', C)``; at most ``max_maps`` channels per stage are drawn."""
    ncols = max_maps
    nrows = 1 + len(stages)
    fig, axes = new_figure(nrows, ncols, size=(1.1 * ncols, 1.35 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(digit, cmap=CMAP_IMAGE)
    axes[0, 0].set_title(f"input {label}".strip(), fontsize=9, loc="left")
    for r, (name, maps) in enumerate(stages.items(), start=1):
        maps = np.asarray(maps)
        vmax = float(maps.max()) or 1.0
        for c in range(min(maps.shape[-1], ncols)):
            axes[r, c].imshow(maps[..., c], cmap="viridis", vmin=0, vmax=vmax)
        axes[r, 0].set_title(f"{name} {maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}",
                             fontsize=9, loc="left")
    fig.suptitle("Feature maps of one held-out digit (after ReLU; bright = strong activation)")
    fig.tight_layout()
    return fig


def training_curve(history: Mapping[str, Sequence[float]]):
    """Loss (left) and train / held-out accuracy (right) per epoch.

    ``history`` keys: ``loss``, ``train_acc``, ``test_acc`` (accuracies in [0, 1]).
    """
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = new_figure(1, 2, size=(12, 4.4))
    axes[0].plot(epochs, history["loss"], "o-", color="tab:red", markersize=3)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training cross-entropy (log)")
    axes[0].set_title("Training loss")
    axes[0].grid(alpha=0.3, which="both")
    axes[1].plot(epochs, 100 * np.asarray(history["train_acc"]), "o-", label="train",
                 markersize=3)
    axes[1].plot(epochs, 100 * np.asarray(history["test_acc"]), "s-", label="held-out",
                 markersize=3)
    axes[1].axhline(95, color="gray", linestyle="--", linewidth=1, label="95% bar")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("accuracy (%)")
    axes[1].set_ylim(max(0, 100 * min(min(history["test_acc"]), min(history["train_acc"])) - 5),
                     100.5)
    axes[1].set_title(f"Accuracy (final held-out {100 * history['test_acc'][-1]:.2f}%)")
    axes[1].legend()
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def prediction_grid(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                    ncols: int = 10, title: str = "Held-out predictions"):
    """Digits with "pred (true)" titles; mistakes get a red frame and red title.
    ``images: (N, H, W)``."""
    images = np.asarray(images)
    n = len(images)
    nrows, ncols = grid_shape(n, ncols)
    fig, axes = new_figure(nrows, ncols, size=(1.3 * ncols, 1.5 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i], cmap="gray_r")
        ok = int(preds[i]) == int(labels[i])
        ax.set_title(f"{int(preds[i])}" if ok else f"{int(preds[i])} (true {int(labels[i])})",
                     fontsize=9, color="black" if ok else "red")
        ax.axis("on")
        hide_ticks(ax)
        if not ok:
            for s in ax.spines.values():
                s.set_visible(True)
                s.set_edgecolor("red")
                s.set_linewidth(2.5)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
