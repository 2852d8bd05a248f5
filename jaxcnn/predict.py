"""Classify image files with an exported model bundle.

    python -m jaxcnn.predict runs/flowers/feature_extraction/bundle photo1.jpg photo2.png
    python -m jaxcnn.predict BUNDLE *.jpg --top-k 3 --figure visuals/custom/predictions.png

Prints the bundle's model and test-time augmentation (TTA, stored in the bundle at export;
``--tta`` overrides it), then, for each image, the ``--top-k`` classes with their probabilities;
``--figure`` also writes a figure with each image next to bars of its top-k confidences.

An image that is missing or cannot be decoded (not an image, corrupt, or truncated: every pixel
is decoded) is named on stderr as ``skipped PATH: reason`` and the others are classified.
Exit status: 0 when at least one image was classified (even if some were skipped), 2 when
none could be read or the bundle cannot be loaded, or on a bad flag.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxcnn.paths import file_in_the_way

__all__ = ["main", "predict_files", "predictions_figure"]


def predict_files(bundle, paths, k: int = 3, *, skipped: list | None = None):
    """``[(path, image_uint8, [(class, prob), ...]), ...]`` for image files, best class first.

    Args:
      bundle: a :class:`jaxcnn.export.Bundle`.
      paths: image files.
      k: classes per image.
      skipped: None: a file that is missing or cannot be decoded raises (FileNotFoundError /
        ValueError naming it). A list: such files are appended to it as ``(path, reason)``
        and left out of the result.
    """
    from jaxcnn.export import load_image

    read = []
    for p in paths:
        try:
            read.append((Path(p), load_image(p)))
        except (FileNotFoundError, ValueError) as err:
            if skipped is None:
                raise
            reason = str(err)
            for prefix in (f"{p}: ", f"image file {p} "):
                reason = reason.removeprefix(prefix)
            skipped.append((Path(p), reason))
    if not read:
        return []
    tops = bundle.top_k([img for _, img in read], k=k)
    return [(p, img, top) for (p, img), top in zip(read, tops, strict=True)]


def predictions_figure(results, path, title: str = "Predictions") -> Path:
    """One row per image: the photo and a horizontal bar chart of its top-k probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 2, figsize=(7.5, 2.3 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]})
    for (p, img, top), (ax_img, ax_bar) in zip(results, axes, strict=True):
        shown = img[..., 0] if img.shape[-1] == 1 else img[..., :3]
        ax_img.imshow(shown, cmap="gray" if img.shape[-1] == 1 else None)
        ax_img.set_title(p.name, fontsize=8)
        ax_img.axis("off")
        names = [c for c, _ in top][::-1]
        probs = [q for _, q in top][::-1]
        colors = ["#bbbbbb"] * (len(top) - 1) + ["#2a7ab9"]
        ax_bar.barh(names, probs, color=colors)
        for y, q in enumerate(probs):
            ax_bar.text(min(q + 0.02, 0.85), y, f"{q:.1%}", va="center", fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("confidence")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def _top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from jaxcnn.evaluate.tta import TTA_MODES, describe_tta_modes

    p = _Parser(
        prog="jaxcnn-predict",
        description="Top-k classes of image files, from a bundle written by jaxcnn.export.save. "
        "Unreadable images are named on stderr and skipped; the exit status is 0 when at least "
        "one image was classified, 2 when none could be.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory (holding bundle.json)")
    p.add_argument("images", type=Path, nargs="+", help="image files (jpg, png, ...)")
    p.add_argument("--top-k", type=_top_k, default=3,
                   help="classes shown per image, at most the bundle's classes (default: 3)")
    p.add_argument("--figure", type=Path, default=None,
                   help="also write a PNG of the images with confidence bars to this path "
                        "(default: no figure)")
    p.add_argument("--tta", choices=TTA_MODES, default=None,
                   help=f"test-time augmentation, overriding the bundle's ({describe_tta_modes()}) "
                        "(default: the mode stored in the bundle, none for bundles without one)")
    return p


def _figure_problem(path: Path) -> str | None:
    """Why no figure can be written to ``path`` (checked before any work), or None."""
    if path.is_dir():
        return f"{path} is a folder; give a file name, e.g. {path / 'predictions.png'}"
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        return f"{blocker} is a file, not a folder; choose another path"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.figure is not None and (problem := _figure_problem(args.figure)):
        parser.error(f"argument --figure: {problem}")
    from jaxcnn import export

    try:
        bundle = export.load(args.bundle, tta=args.tta)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    k = min(args.top_k, bundle.num_classes)
    skipped: list = []
    results = predict_files(bundle, args.images, k, skipped=skipped)
    for p, reason in skipped:
        print(f"skipped {p}: {reason}", file=sys.stderr)
    if not results:
        print(f"error: cannot read any of the {len(args.images)} image(s); nothing to classify",
              file=sys.stderr)
        return 2
    source = "--tta" if args.tta is not None else "stored in the bundle"
    print(f"{bundle.model_name}, {bundle.num_classes} classes, TTA {bundle.tta} ({source})")
    width = max(len(c) for c in bundle.class_names)
    for p, _, top in results:
        print(p)
        for rank, (c, q) in enumerate(top, 1):
            print(f"  {rank}. {c:<{width}} {q:7.2%}  {'#' * int(round(30 * q))}")
    if args.figure is not None:
        predictions_figure(results, args.figure,
                           title=f"{bundle.model_name}: top-{k} predictions")
        print(f"figure: {args.figure}")
    if skipped:
        print(f"warning: {len(skipped)} of {len(args.images)} image(s) could not be read and "
              "were skipped (named above)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
