"""Figures of the architectures lesson: a timeline of CNNs, a residual block, gradient norms.

Matplotlib is imported inside the functions (see ``jaxcnn.viz.style``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxcnn.viz.style import new_figure, save_figure

__all__ = ["MILESTONES", "gradient_norms_plot", "residual_block_diagram", "timeline"]

# One row per milestone. ``params`` in millions; ``params_source`` says where the number comes
# from: "jaxcnn" = counted by this library's registry (``jaxcnn.models.create(...)`` with 1000
# classes, BatchNorm moving statistics included as Keras counts), "paper" = the paper's figure.
# ``top1`` is ImageNet (ILSVRC) top-1 accuracy in percent as reported in the paper (None: the
# network was not evaluated on ImageNet). These are the papers' numbers, NOT measured here.
MILESTONES: tuple[dict, ...] = (
    dict(name="LeNet-5", year=1998, params=0.0617, params_source="jaxcnn", top1=None,
         note="digits (MNIST), 32x32x1: no ImageNet result", model="lenet5"),
    dict(name="AlexNet", year=2012, params=60.0, params_source="paper", top1=62.5,
         note="top-1 error 37.5%, ILSVRC-2010 test, one net", model=None),
    dict(name="VGG-16", year=2014, params=138.4, params_source="jaxcnn", top1=75.6,
         note="top-1 error 24.4%, multi-crop + dense eval", model="vgg16"),
    dict(name="ResNet-50", year=2015, params=25.6, params_source="jaxcnn", top1=77.15,
         note="top-1 error 22.85%, 10-crop", model="resnet50"),
    dict(name="MobileNetV2", year=2018, params=3.4, params_source="paper", top1=72.0,
         note="width 1.0, 224x224, single crop", model=None),
    dict(name="EfficientNet-B0", year=2019, params=5.3, params_source="paper", top1=77.1,
         note="single crop; our EfficientNet-Lite0 port has 4.65M", model=None),
)


def timeline(path, milestones: Sequence[Mapping] = MILESTONES, *, title=None) -> Path:
    """Two panels against the year: parameters (log scale) and ImageNet top-1 accuracy.

    Filled markers: parameter counts computed by jaxcnn's registry; hollow markers: the paper's
    figure. Every accuracy is the one reported in the paper (not measured here).
    """
    if not milestones:
        raise ValueError("milestones must be a non-empty sequence of dicts")
    fig, (ax_p, ax_a) = new_figure(2, 1, size=(9.0, 7.0), sharex=True)
    years = [m["year"] for m in milestones]
    # Neighbours closer than 2 years: label the earlier one on its left, the later on its right.
    sides = []
    for i, y in enumerate(years):
        if i + 1 < len(years) and years[i + 1] - y <= 2:
            sides.append(-1)
        elif i > 0 and y - years[i - 1] <= 2:
            sides.append(1)
        else:
            sides.append(0)
    ha = {-1: "right", 0: "center", 1: "left"}
    colors = [f"C{i}" for i in range(len(milestones))]
    for m, c, side in zip(milestones, colors, sides, strict=True):
        ours = m["params_source"] == "jaxcnn"
        ax_p.scatter(m["year"], m["params"], s=120, marker="o", zorder=3,
                     facecolor=c if ours else "white", edgecolor=c, linewidth=2)
        label = f"{m['name']}\n{m['params']:.3g}M" if m["params"] >= 1 else (
            f"{m['name']}\n{m['params'] * 1e3:.1f}k")
        ax_p.annotate(label, (m["year"], m["params"]), textcoords="offset points",
                      xytext=(8 * side, 10), ha=ha[side], va="bottom", fontsize=8.5)
    ax_p.plot(years, [m["params"] for m in milestones], color="0.7", zorder=1)
    ax_p.set_yscale("log")
    ax_p.set_ylim(0.02, 2000)
    ax_p.set_ylabel("parameters (millions, log)")
    ax_p.set_title(title or "Milestones of CNNs for image classification")
    ax_p.scatter([], [], s=80, facecolor="0.4", edgecolor="0.4", label="params counted by jaxcnn")
    ax_p.scatter([], [], s=80, facecolor="white", edgecolor="0.4", label="params from the paper")
    ax_p.legend(loc="lower right", fontsize=8, frameon=False)
    ax_p.grid(alpha=0.3, which="major")

    acc = [(m, c, side) for m, c, side in zip(milestones, colors, sides, strict=True)
           if m["top1"] is not None]
    ax_a.plot([m["year"] for m, _, _ in acc], [m["top1"] for m, _, _ in acc], color="0.7",
              zorder=1)
    for m, c, side in acc:
        ax_a.scatter(m["year"], m["top1"], s=120, color=c, zorder=3, marker="s")
        ax_a.annotate(f"{m['name']}\n{m['top1']:.1f}%", (m["year"], m["top1"]),
                      textcoords="offset points", xytext=(8 * side, 10), ha=ha[side],
                      va="bottom", fontsize=8.5)
    for m, c in zip(milestones, colors, strict=True):
        if m["top1"] is None:
            ax_a.annotate(f"{m['name']}: {m['note']}", (m["year"], 58), ha="left",
                          va="bottom", fontsize=8, color=c)
    ax_a.set_ylim(55, 85)
    ax_a.set_ylabel("ImageNet top-1 (%)\nreported in the paper")
    ax_a.set_xlabel("year")
    ax_a.set_xticks(years)
    ax_a.tick_params(axis="x", labelrotation=45)
    ax_a.set_xlim(min(years) - 1.5, max(years) + 1.5)
    ax_a.grid(alpha=0.3)
    fig.text(0.01, -0.02,
             "Accuracies: ImageNet (ILSVRC) validation/test top-1 as reported in each paper, "
             "evaluation protocols differ (AlexNet: ILSVRC-2010 test; VGG: multi-crop+dense; "
             "ResNet: 10-crop;\nMobileNetV2, EfficientNet: single crop). Not measured here. "
             "Params: jaxcnn registry counts (1000 classes) where we have the model, else the "
             "paper's figure.", fontsize=7, ha="left", va="top")
    fig.tight_layout()
    return save_figure(fig, path)


def residual_block_diagram(path, *, title="A plain block and a residual block") -> Path:
    """The basic block of He et al. (2016) next to the same block without its skip connection.

    conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> (+ identity) -> ReLU, drawn with patches/arrows.
    """
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

    fig, axes = new_figure(1, 2, size=(8.5, 7.0))
    layers = [("conv 3x3", "#9ecae1"), ("BatchNorm", "#fdd0a2"), ("ReLU", "#c7e9c0"),
              ("conv 3x3", "#9ecae1"), ("BatchNorm", "#fdd0a2")]
    w, h, x0 = 2.2, 0.55, 1.0
    for ax, residual in zip(axes, (False, True), strict=True):
        ax.set_xlim(0, 6)
        ax.set_ylim(-0.6, 9.6)
        ax.axis("off")
        ax.set_title("residual block: out = ReLU(F(x) + x)" if residual
                     else "plain block: out = ReLU(F(x))", fontsize=10)

        def arrow(p, q, ax=ax, **kw):
            ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=14,
                                         color=kw.pop("color", "k"), lw=1.5, **kw))

        cx = x0 + w / 2
        ax.text(cx, 9.2, "x  (N, H, W, C)", ha="center", va="center", fontsize=10,
                fontweight="bold")
        top = 8.9
        ys = [8.0 - 1.05 * i for i in range(len(layers))]
        arrow((cx, top), (cx, ys[0] + h / 2))
        for i, ((name, color), y) in enumerate(zip(layers, ys, strict=True)):
            ax.add_patch(FancyBboxPatch((x0, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                        facecolor=color, edgecolor="k"))
            ax.text(cx, y, name, ha="center", va="center", fontsize=10)
            if i + 1 < len(layers):
                arrow((cx, y - h / 2), (cx, ys[i + 1] + h / 2))
        y_add = ys[-1] - 1.1
        y_relu = y_add - 1.05
        if residual:
            ax.add_patch(Circle((cx, y_add), 0.28, facecolor="white", edgecolor="k", lw=1.5))
            ax.text(cx, y_add, "+", ha="center", va="center", fontsize=16)
            arrow((cx, ys[-1] - h / 2), (cx, y_add + 0.28))
            # The skip connection: from x, around the right of the stack, into the sum.
            xr = x0 + w + 1.2
            ax.plot([cx, xr, xr], [top - 0.15, top - 0.15, y_add], color="C3", lw=2)
            arrow((xr, y_add), (cx + 0.28, y_add), color="C3")
            ax.text(xr + 0.15, (top + y_add) / 2, "identity\nshortcut\n(x itself,\n0 params)",
                    color="C3", ha="left", va="center", fontsize=9)
            ax.text(cx - w / 2 - 0.15, (ys[0] + ys[-1]) / 2, "F(x)", ha="right", va="center",
                    fontsize=11, style="italic")
            arrow((cx, y_add - 0.28), (cx, y_relu + h / 2))
        else:
            arrow((cx, ys[-1] - h / 2), (cx, y_relu + h / 2))
            ax.text(cx - w / 2 - 0.15, (ys[0] + ys[-1]) / 2, "F(x)", ha="right", va="center",
                    fontsize=11, style="italic")
        ax.add_patch(FancyBboxPatch((x0, y_relu - h / 2), w, h, boxstyle="round,pad=0.05",
                                    facecolor="#c7e9c0", edgecolor="k"))
        ax.text(cx, y_relu, "ReLU", ha="center", va="center", fontsize=10)
        arrow((cx, y_relu - h / 2), (cx, y_relu - 0.95))
        ax.text(cx, y_relu - 1.15, "out", ha="center", va="center", fontsize=10,
                fontweight="bold")
    fig.suptitle(title)
    fig.text(0.5, 0.0, "The gradient of the sum reaches x twice: through F and, unchanged, "
             "through the shortcut (d out / d x = dF/dx + 1 before the ReLU).\nWhen the shape "
             "changes (stride 2, more channels) the shortcut subsamples x and pads zero "
             "channels (option A) or uses a 1x1 conv + BN (option B).", ha="center",
             va="top", fontsize=8.5)
    fig.tight_layout()
    return save_figure(fig, path)


def gradient_norms_plot(
    curves: Mapping[str, Sequence[float]],
    path,
    *,
    title: str = "Gradient norm of each conv kernel",
    note: str | None = None,
) -> Path:
    """Per-layer gradient norms (log scale) against depth, one line per network/moment.

    Args:
      curves: ``{label: [norm of conv 1, conv 2, ...]}`` in depth order (input side first).
        One colour per network (the label up to its first comma; red tones for "plain",
        blue for the others); labels containing "epoch" are dashed ("plain56, after epoch 1").
        Zero norms (a zero-initialised residual branch at init) leave gaps on the log axis.
      note: a line of text under the axes (e.g. the batch used).
    """
    import numpy as np

    if not curves:
        raise ValueError("curves must be a non-empty dict {label: [grad norm per conv layer]}")
    fig, ax = new_figure(size=(9.0, 4.8))
    reds, blues = iter(["#d62728", "#ff7f0e", "#8c564b", "#e377c2"]), iter(
        ["#1f77b4", "#17becf", "#2ca02c", "#9467bd"])
    colors: dict[str, str] = {}
    for label, norms in curves.items():
        norms = np.asarray(norms, np.float64)
        norms = np.where(norms > 0, norms, np.nan)  # log axis: zeros become gaps, not cliffs
        base = label.split(",")[0].strip()  # "plain56, after epoch 1" -> "plain56"
        if base not in colors:
            colors[base] = next(reds) if "plain" in base.lower() else next(blues)
        color = colors[base]
        ax.plot(np.arange(1, len(norms) + 1), norms, marker="o", ms=3, color=color,
                linestyle="--" if "epoch" in label.lower() else "-", label=label)
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("conv layer (1 = first, next to the input)")
    ax.set_ylabel("||dL/dW|| (Frobenius)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, -0.01, note, fontsize=8, ha="left", va="top")
    fig.tight_layout()
    return save_figure(fig, path)
