"""Lesson 1: the arithmetic of a convolutional layer, on a real photo.

    python -m experiments.conv_math [--workdir runs/conv_math] [--dpi 150]
    python -m experiments.conv_math --visuals-dir visuals/conv_math   # the README's figures

Seven short sections, each printing a small table and writing one figure (to
``<workdir>/figures/``; ``--visuals-dir`` elsewhere):

1. pixels and channels   a photo is an (H, W, 3) uint8 array; a batch is (N, H, W, C)
2. classic filters       Sobel, Prewitt, Laplacian, blur, sharpen, ... slid over the photo
3. stride and padding    output sizes measured by ``ops.conv`` == the formula ``ops.output_size``
4. pooling               max / average / min pooling and global pooling of one feature map
5. receptive field       how much of the input one unit sees, layer after layer
6. parameter counts      a dense layer vs a conv layer on 224x224x3 and 32x32x3 inputs
7. worked example        the course's 5x5 vertical-edge example, including its erratum

The photo is Grace Hopper's portrait that ships inside matplotlib (``mpl-data/sample_data``),
so the lesson runs offline. All maths goes through ``jaxcnn.ops``; the figure functions in
``jaxcnn.viz.lessons`` only draw what this module computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import _cli
from experiments._cli import add_common, make_parser, positive_int

FIGURES = (
    "01_pixels_channels.png",
    "01_pixel_patch.png",
    "02_filter_bank.png",
    "03_stride_padding.png",
    "04_pooling.png",
    "05_receptive_field.png",
    "06_param_counts.png",
    "07_worked_example.png",
)

# The course's worked example (chapter 004): a bright left half, a dark right half.
WORKED_IMAGE = np.array([[10, 10, 10, 0, 0]] * 5, dtype=np.float32)
WORKED_KERNEL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float32)

# A VGG-like stack for the receptive-field section: (name, kernel, stride).
RF_STACK = (
    ("conv1", 3, 1), ("conv2", 3, 1), ("pool1", 2, 2),
    ("conv3", 3, 1), ("conv4", 3, 1), ("pool2", 2, 2),
    ("conv5", 3, 1), ("conv6", 3, 1), ("pool3", 2, 2),
    ("conv7", 3, 1), ("conv8", 3, 1), ("pool4", 2, 2),
    ("conv9", 3, 1), ("conv10", 3, 1),
)


# --------------------------------------------------------------------------------------------
# Computations (small, pure, tested in tests/test_lessons.py)
# --------------------------------------------------------------------------------------------


def load_photo() -> np.ndarray:
    """Grace Hopper's portrait from matplotlib's sample data: ``(H, W, 3)`` uint8."""
    import matplotlib.cbook as cbook

    from jaxcnn.data.images import read_image_rgb

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    if not Path(path).exists():  # pragma: no cover - depends on the matplotlib build
        raise FileNotFoundError(f"matplotlib sample image not found at {path}")
    return read_image_rgb(path)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601 weights) of ``(H, W, 3)`` uint8 -> ``(H, W)`` float32 in [0, 255]."""
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.asarray(rgb, dtype=np.float32) @ w


def conv2d(image: np.ndarray, kernel2d: np.ndarray, stride: int = 1,
           padding: str | int = "VALID") -> np.ndarray:
    """One grayscale ``(H, W)`` image through one 2-D kernel with ``ops.conv`` -> ``(H', W')``."""
    from jaxcnn import ops

    x = np.asarray(image, dtype=np.float32)[None, :, :, None]
    k = np.asarray(kernel2d, dtype=np.float32)[:, :, None, None]
    return np.asarray(ops.conv(x, k, stride=stride, padding=padding))[0, :, :, 0]


def worked_example() -> dict:
    """The course's vertical-edge example computed three ways.

    Returns ``output`` (``ops.conv``, cross-correlation), ``true_conv``
    (``ops.true_convolution``, kernel flipped) and ``terms`` (the nine products of output
    cell (0, 1), written out as the course does by hand).
    """
    from jaxcnn import ops

    x = WORKED_IMAGE[None, :, :, None]
    k = WORKED_KERNEL[:, :, None, None]
    out = np.asarray(ops.conv(x, k))[0, :, :, 0]
    flipped = np.asarray(ops.true_convolution(x, k))[0, :, :, 0]
    window = WORKED_IMAGE[0:3, 1:4]
    terms = [(float(a), float(b)) for a, b in zip(window.ravel(), WORKED_KERNEL.ravel(),
                                                  strict=True)]
    return {"output": out, "true_conv": flipped, "terms": terms,
            "cell_01": sum(a * b for a, b in terms)}


def _same_pad(kernel: int) -> int:
    """Per-side padding that ``ops.same_padding`` gives for an odd kernel, as one int."""
    from jaxcnn import ops

    p = ops.same_padding(kernel)
    p = np.asarray(p).ravel()
    return int(p[0])


def stride_padding_table(h: int, w: int, kernel: int = 3, strides=(1, 2, 3),
                         paddings=("VALID", "SAME")) -> list[dict]:
    """For each (stride, padding): the output size the formula predicts
    (``ops.output_size``) and the one ``ops.conv`` actually produces on an ``h x w`` input.

    Asserts that the two agree (for odd kernels, SAME = per-side padding ``(k - 1) / 2``).
    """
    from jaxcnn import ops

    x = np.zeros((1, h, w, 1), np.float32)
    k = np.zeros((kernel, kernel, 1, 1), np.float32)
    rows = []
    for padding in paddings:
        p = 0 if padding == "VALID" else _same_pad(kernel)
        for s in strides:
            formula = (int(ops.output_size(h, kernel, s, p)), int(ops.output_size(w, kernel, s, p)))
            measured = tuple(int(d) for d in ops.conv(x, k, stride=s, padding=padding).shape[1:3])
            assert formula == measured, (padding, s, formula, measured)
            rows.append({"stride": s, "padding": padding, "pad_per_side": p,
                         "formula": formula, "measured": measured})
    return rows


def course_size_examples() -> list[tuple[str, int, int]]:
    """The course's output-size exercises: ``(description, formula result, expected)``."""
    from jaxcnn import ops

    return [
        ("32x32, k5, p2, s1", int(ops.output_size(32, 5, 1, 2)), 32),
        ("28x28, k3, p0, s2", int(ops.output_size(28, 3, 2, 0)), 13),
        ("5x5,   k3, p0, s2", int(ops.output_size(5, 3, 2, 0)), 2),
        ("28x28, k5, p2, s1", int(ops.output_size(28, 5, 1, 2)), 28),
    ]


def receptive_fields(stack=RF_STACK) -> list[dict]:
    """Receptive field size, jump (input pixels between neighbouring units) and start (centre
    of the first unit's field) after each layer of ``stack`` (VALID, no padding), from
    ``ops.receptive_field``, checked against the recurrence
    ``r_l = r_{l-1} + (k_l - 1) * j_{l-1}``, ``j_l = j_{l-1} * s_l``."""
    from jaxcnn import ops

    info = ops.receptive_field([(k, s) for _, k, s in stack])
    rows, r, j = [], 1, 1
    for (name, k, s), item in zip(stack, info, strict=True):
        r, j = r + (k - 1) * j, j * s
        assert (int(item.size), int(item.jump)) == (r, j), (name, item, r, j)
        rows.append({"layer": name, "kernel": k, "stride": s, "rf": int(item.size),
                     "jump": int(item.jump), "start": float(item.start)})
    return rows


def param_count_rows(inputs=((224, 224, 3), (32, 32, 3)), hidden: int = 512,
                     filters: int = 64) -> list[tuple[str, str, int]]:
    """First-layer parameter counts: a dense layer on the flattened image vs conv layers."""
    from jaxcnn import ops

    rows = []
    for h, w, c in inputs:
        label = f"{h}x{w}x{c} input"
        rows.append((label, f"Dense, {hidden} units", int(ops.dense_params(h * w * c, hidden))))
        rows.append((label, f"Conv 3x3, {filters} filters", int(ops.conv_params(3, 3, c, filters))))
        rows.append((label, f"Conv 5x5, {filters} filters", int(ops.conv_params(5, 5, c, filters))))
    return rows


# --------------------------------------------------------------------------------------------
# The lesson
# --------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list], widths: list[int] | None = None) -> str:
    widths = widths or [max(len(str(h)), *(len(str(r[i])) for r in rows)) + 2
                        for i, h in enumerate(headers)]
    fmt = "".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*headers), "-" * sum(widths)]
    lines += [fmt.format(*[str(v) for v in r]) for r in rows]
    return "\n".join(lines)


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def run(visuals_dir: Path, dpi: int = 150, verbose: bool = True) -> list[Path]:
    """Run all sections; returns the paths of the figures written."""
    import jax.numpy as jnp

    from jaxcnn import ops
    from jaxcnn.ops import filters
    from jaxcnn.viz import lessons
    from jaxcnn.viz.style import save_figure

    say = print if verbose else (lambda *a, **k: None)
    written = []

    def save(fig, name):
        written.append(save_figure(fig, Path(visuals_dir) / name, dpi=dpi))

    # 1. pixels and channels --------------------------------------------------------------
    photo = load_photo()
    gray = to_gray(photo)
    batch = jnp.asarray(photo)[None].astype(jnp.float32) / 255.0
    if verbose:
        _section("1. pixels and channels")
    say(f"photo: shape (H, W, C) = {photo.shape}, dtype {photo.dtype}, "
        f"values {photo.min()}..{photo.max()}, {photo.size:,} numbers")
    say(f"as a batch for a CNN: (N, H, W, C) = {tuple(batch.shape)}, dtype {batch.dtype}, "
        f"scaled to [0, 1]")
    say("channel means (R, G, B): " + ", ".join(f"{m:.1f}" for m in photo.mean(axis=(0, 1))))
    say(f"grayscale (0.299 R + 0.587 G + 0.114 B): shape {gray.shape}")
    top, left = 190, 235  # a patch around the eye
    say(f"pixel patch at rows {top}..{top + 7}, cols {left}..{left + 7} (grayscale, rounded):")
    say(np.array2string(np.round(gray[top:top + 8, left:left + 8]).astype(int), max_line_width=100))
    save(lessons.image_channels(photo), FIGURES[0])
    save(lessons.pixel_patch(np.round(gray).astype(np.uint8), top, left, 8), FIGURES[1])

    # 2. classic filters -------------------------------------------------------------------
    if verbose:
        _section("2. a bank of classic filters (ops.conv, VALID)")
    names = ["SOBEL_X", "SOBEL_Y", "PREWITT_X", "PREWITT_Y", "LAPLACIAN", "LAPLACIAN_8",
             "BOX_BLUR", "GAUSSIAN_BLUR", "SHARPEN", "VERTICAL_EDGE", "HORIZONTAL_EDGE",
             "EMBOSS", "OUTLINE"]
    kernels = {n: np.asarray(getattr(filters, n), np.float32) for n in names
               if hasattr(filters, n)}
    g01 = gray / 255.0
    # half resolution (2x2 average pooling) so edges stay visible at figure size
    half = np.asarray(ops.avg_pool(jnp.asarray(g01)[None, :, :, None], 2))[0, :, :, 0]
    say(f"input: the grayscale photo in [0, 1], average-pooled 2x2 to {half.shape}")
    fmaps = {n: conv2d(half, k) for n, k in kernels.items()}
    rows = [[n, "x".join(map(str, k.shape)), f"{k.sum():g}", f"{fmaps[n].min():.2f}",
             f"{fmaps[n].max():.2f}", f"{np.abs(fmaps[n]).mean():.3f}"]
            for n, k in kernels.items()]
    say(_table(["filter", "size", "sum", "min", "max", "mean |y|"], rows))
    say("kernels summing to 0 respond only to change (edges); summing to 1 keep brightness.")
    save(lessons.filter_bank(half, kernels, fmaps), FIGURES[2])

    # 3. stride and padding ---------------------------------------------------------------
    small = np.asarray(ops.avg_pool(jnp.asarray(g01)[None, :, :, None], 8))[0, :, :, 0]
    h, w = small.shape
    if verbose:
        _section(f"3. stride and padding (3x3 Sobel-x on the photo shrunk to {h}x{w})")
    table = stride_padding_table(h, w, 3)
    say(_table(["stride", "padding", "pad/side", "formula (H, W)", "ops.conv (H, W)", "agree"],
               [[r["stride"], r["padding"], r["pad_per_side"], r["formula"], r["measured"],
                 "yes"] for r in table]))
    say("formula: out = floor((n + 2p - k) / s) + 1  (every row checked with an assert)")
    say("course exercises:")
    for desc, got, want in course_size_examples():
        assert got == want, (desc, got, want)
        say(f"  {desc} -> {got}")
    sobel = kernels.get("SOBEL_X", np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32))
    results = [(f"stride {r['stride']}, {r['padding']}",
                conv2d(small, sobel, r["stride"], r["padding"])) for r in table]
    save(lessons.stride_padding(results, (h, w)), FIGURES[3])

    # 4. pooling ---------------------------------------------------------------------------
    if verbose:
        _section("4. pooling one feature map")
    quarter = np.asarray(ops.avg_pool(jnp.asarray(g01)[None, :, :, None], 4))
    fmap = np.abs(np.asarray(ops.conv(quarter, sobel[:, :, None, None])))
    fm = jnp.asarray(fmap)
    pooled = {
        "max pool 4x4, s4": ops.max_pool(fm, 4),
        "avg pool 4x4, s4": ops.avg_pool(fm, 4),
        "min pool 4x4, s4": ops.min_pool(fm, 4),
    }
    glob = {"global max": float(ops.global_max_pool(fm)[0, 0]),
            "global avg": float(ops.global_avg_pool(fm)[0, 0])}
    rows = [[k, "x".join(map(str, v.shape[1:3])), f"{float(v.min()):.3f}",
             f"{float(v.max()):.3f}", f"{float(v.mean()):.3f}"] for k, v in pooled.items()]
    say(f"feature map |Sobel-x| of the photo shrunk 4x: {fmap.shape[1]}x{fmap.shape[2]}")
    say(_table(["pooling", "size", "min", "max", "mean"], rows))
    say(", ".join(f"{k} -> {v:.3f} (shape (N, C) = (1, 1))" for k, v in glob.items()))
    save(lessons.pooling(fmap[0, :, :, 0], {k: np.asarray(v)[0, :, :, 0]
                                            for k, v in pooled.items()}, glob), FIGURES[4])

    # 5. receptive field ---------------------------------------------------------------------
    if verbose:
        _section("5. receptive field through a VGG-like conv/pool stack (ops.receptive_field)")
    rf = receptive_fields()
    say(_table(["layer", "kernel", "stride", "RF", "jump", "start"],
               [[r["layer"], r["kernel"], r["stride"], r["rf"], r["jump"], f"{r['start']:g}"]
                for r in rf]))
    say("RF grows by (k - 1) x jump per layer; each pooling doubles the jump.")
    centre = (230.0, 260.0)  # (row, col) on the face
    boxes = []
    for r in rf:
        if r["layer"] in ("conv2", "conv4", "conv6", "conv8", "conv10"):
            # the unit whose field is centred nearest to `centre`: unit i is centred on
            # start + i * jump input pixels
            half = (r["rf"] - 1) / 2
            cy = r["start"] + round((centre[0] - r["start"]) / r["jump"]) * r["jump"]
            cx = r["start"] + round((centre[1] - r["start"]) / r["jump"]) * r["jump"]
            boxes.append((f"{r['layer']}: {r['rf']}x{r['rf']}", cy - half, cx - half, r["rf"]))
    save(lessons.receptive_field([r["layer"] for r in rf], [r["rf"] for r in rf], gray,
                                 centre, boxes), FIGURES[5])

    # 6. parameter counts ------------------------------------------------------------------
    if verbose:
        _section("6. parameters of one layer: dense vs convolution")
    prow = param_count_rows()
    say(_table(["input", "layer", "params"], [[a, b, f"{c:,}"] for a, b, c in prow]))
    say(f"course checks: 128x128x3 input, 50 3x3 filters -> {ops.conv_params(3, 3, 3, 50):,} "
        f"params; Dense 784 -> 128 -> {ops.dense_params(784, 128):,} params")
    save(lessons.param_counts(prow), FIGURES[6])

    # 7. worked example --------------------------------------------------------------------
    if verbose:
        _section("7. the course's worked example (5x5 image, vertical-edge kernel)")
    ex = worked_example()
    say("input rows: [10 10 10 0 0] x 5;  kernel [[1 0 -1] [2 0 -2] [1 0 -1]]")
    say("cell (0, 1) = " + " + ".join(f"{a:g}*{b:g}" for a, b in ex["terms"])
        + f" = {ex['cell_01']:g}")
    say("ops.conv (cross-correlation, what CNNs compute):")
    say(np.array2string(ex["output"].astype(int)))
    say("ops.true_convolution (kernel flipped):")
    say(np.array2string(ex["true_conv"].astype(int)))
    say("ERRATUM: the course text gives 30 for the edge cells; its own nine products sum to "
        "40 (10 + 20 + 10), and so does ops.conv. The measurement wins.")
    note = ("Course text says 30 for the edge cells; 10*1 + 10*2 + 10*1 = 40 (erratum). "
            "Flipping the kernel (true convolution) gives -40.")
    save(lessons.worked_example(WORKED_IMAGE, WORKED_KERNEL, ex["output"], note), FIGURES[7])

    if verbose:
        _section("figures")
        for p in written:
            print(f"  {p}")
    return written


def build_parser():
    parser = make_parser(
        "conv_math",
        "Pixels, channels, filters, stride, padding, pooling, receptive field and parameter "
        "counts on a real photo (matplotlib's sample image); prints tables and writes figures.",
    )
    add_common(parser, "conv_math", seed=False)
    parser.add_argument("--dpi", type=positive_int, default=150,
                        help="resolution of the saved PNG figures (dots per inch)")
    parser.add_argument("--quiet", action="store_true", help="print nothing; only write figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(_cli.figures_dir(args), dpi=args.dpi, verbose=not args.quiet)
    return 0


if __name__ == "__main__":
    _cli.run(main)
