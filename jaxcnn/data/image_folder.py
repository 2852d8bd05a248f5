"""Image-folder datasets: ``PATH/<class>/*.jpg`` (or ``PATH/train/<class>`` + ``PATH/val/<class>``).

::

    from jaxcnn.data import balanced_class_weights, load_image_folder, scan_image_folder

    scan = scan_image_folder("photos")        # classes, files per class, skipped files, imbalance
    print(scan.report())
    ds = load_image_folder("photos", image_size=(128, 128))          # one ArrayDataset
    val, train = ds.split(0.15, seed=0)                               # stratified hold-out
    weights = balanced_class_weights(train.labels, train.num_classes)  # n / (k * count)

Layouts:

* flat: ``PATH/<class>/<image>``; one :class:`~jaxcnn.data.ArrayDataset` is returned.
* split: ``PATH/train/<class>/<image>`` and ``PATH/val/<class>/<image>`` (``validation`` and
  ``test`` are accepted for the second folder); ``(train, val)`` is returned. The classes are
  those of ``train/`` (sorted); a ``val/`` class missing from ``train/`` is an error.

Class names are the folder names, sorted, so label ``i`` is the ``i``-th name alphabetically.
Files are read by :func:`jaxcnn.data.images.read_image_rgb`, the library's one image reader
(EXIF orientation applied; grayscale, 16-bit, palette, CMYK and RGBA images converted to RGB,
alpha dropped, not composited; every pixel decoded, a truncated file is an error), and every
image is resized (bilinear, antialiased; the aspect ratio is not kept) to ``image_size``. Files
that are not images (by extension) and files that fail to decode, truncated ones included, are
skipped and listed with the reason; hidden files (``.DS_Store``) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import ArrayDataset, resize_images
from jaxcnn.data.images import decode_image, read_image_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderScan",
    "decode_image",
    "load_image_folder",
    "read_image_rgb",
    "scan_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
"""File extensions (lower case) read as images; anything else is skipped as non-image."""

_TRAIN_DIRS = ("train",)
_VAL_DIRS = ("val", "validation", "test")


@dataclass
class FolderScan:
    """What :func:`scan_image_folder` found.

    Attributes:
      root: the folder scanned.
      layout: ``"flat"`` (``root/<class>``) or ``"split"`` (``root/train`` + ``root/val``).
      class_names: sorted class folder names (label order).
      files: split name (``"all"`` for flat, else ``"train"`` and ``"val"``) -> one list of
        image paths per class, in label order.
      skipped: ``(path, reason)`` for every file that is not used.
    """

    root: Path
    layout: str
    class_names: tuple[str, ...]
    files: dict[str, list[list[Path]]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def counts(self, split: str | None = None) -> np.ndarray:
        """(num_classes,) int64 images per class in ``split`` (None: all splits together)."""
        splits = list(self.files) if split is None else [split]
        out = np.zeros(self.num_classes, np.int64)
        for s in splits:
            if s not in self.files:
                raise ValueError(f"no split {s!r} in this scan; splits: {list(self.files)}")
            out += np.array([len(f) for f in self.files[s]], np.int64)
        return out

    @property
    def imbalance_ratio(self) -> float:
        """Largest class count / smallest class count over all splits (1.0 = balanced)."""
        c = self.counts()
        return float(c.max() / max(c.min(), 1))

    def report(self) -> str:
        """A human-readable table: images per class and split, imbalance, skipped files."""
        splits = list(self.files)
        width = max(12, *(len(n) for n in self.class_names))
        head = f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in splits)
        lines = [f"image folder {self.root} ({self.layout} layout, {self.num_classes} classes)",
                 head, "-" * len(head)]
        for i, name in enumerate(self.class_names):
            lines.append(f"{name:<{width}} " + " ".join(f"{len(self.files[s][i]):>7}"
                                                        for s in splits))
        lines.append(f"{'total':<{width}} " + " ".join(f"{int(self.counts(s).sum()):>7}"
                                                       for s in splits))
        c = self.counts()
        lines.append(
            f"imbalance ratio (largest / smallest class): {self.imbalance_ratio:.2f} "
            f"({self.class_names[int(c.argmax())]} {int(c.max())} / "
            f"{self.class_names[int(c.argmin())]} {int(c.min())})"
        )
        if self.skipped:
            lines.append(self.report_skipped())
        return "\n".join(lines)

    def report_skipped(self, start: int = 0, limit: int = 20, what: str = "file(s)") -> str:
        """The skipped files from index ``start`` on, one ``path: reason`` line each (at most
        ``limit``), under ``skipped N <what>:``; ``""`` when there are none. With ``start``
        = ``len(scan.skipped)`` taken before :func:`load_image_folder`, it reports the files
        that failed to decode."""
        items = self.skipped[start:]
        if not items:
            return ""
        lines = [f"skipped {len(items)} {what}:"]
        lines += [f"  {path}: {reason}" for path, reason in items[:limit]]
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more")
        return "\n".join(lines)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_image(path: Path) -> str | None:
    """None when PIL can identify and verify ``path``, else the reason it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
    except UnidentifiedImageError:
        return "corrupt or unreadable image (PIL cannot identify it)"
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds on broken files
        what = ("truncated or corrupt image, the data ends early" if "truncated" in
                str(err).lower() else "corrupt image")
        return f"{what} ({type(err).__name__}: {err})"
    return None


def _scan_classes(folder: Path, verify: bool, skipped: list) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for class_dir in _subdirs(folder):
        good = []
        for f in sorted(class_dir.rglob("*")):
            if f.is_dir() or any(part.startswith(".") for part in f.relative_to(folder).parts):
                continue
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((f, f"not an image file (extension {f.suffix or 'none'!r})"))
                continue
            reason = _check_image(f) if verify else None
            if reason is not None:
                skipped.append((f, reason))
                continue
            good.append(f)
        classes[class_dir.name] = good
    stray = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    for f in stray:
        skipped.append((f, "file outside a class folder"))
    return classes


def _check_classes(classes: dict[str, list[Path]], where: Path) -> None:
    if len(classes) < 2:
        raise ValueError(
            f"{where} holds {len(classes)} class folder(s) {sorted(classes)}; a classifier needs "
            "at least 2. Expected one sub-folder per class: PATH/<class>/<image files>"
        )
    empty = sorted(name for name, files in classes.items() if not files)
    if empty:
        raise ValueError(
            f"class folder(s) {empty} in {where} hold no readable images; add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder(s)"
        )


def scan_image_folder(path: str | os.PathLike, *, verify: bool = True) -> FolderScan:
    """Find the classes and image files of an image folder, without decoding pixels.

    Args:
      path: ``PATH/<class>/*`` or ``PATH/train/<class>/*`` + ``PATH/val/<class>/*``.
      verify: open every file with PIL to find corrupt ones (headers only; fast). Files that
        pass but fail to decode fully are skipped later by :func:`load_image_folder`.

    Returns:
      A :class:`FolderScan` (``print(scan.report())`` for a summary).

    Raises:
      FileNotFoundError: ``path`` does not exist or is not a folder.
      ValueError: fewer than 2 classes, or a class folder without readable images.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"image folder {root} does not exist; expected PATH/<class>/<images> "
            "(or PATH/train/<class> and PATH/val/<class>)"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is a file, not an image folder")
    skipped: list[tuple[Path, str]] = []
    names = {p.name for p in _subdirs(root)}
    train_dir = next((root / d for d in _TRAIN_DIRS if d in names), None)
    val_dir = next((root / d for d in _VAL_DIRS if d in names), None)
    if train_dir is not None and val_dir is not None:
        train = _scan_classes(train_dir, verify, skipped)
        val = _scan_classes(val_dir, verify, skipped)
        _check_classes(train, train_dir)
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise ValueError(
                f"{val_dir} has class folder(s) {unknown} that {train_dir} lacks; the "
                f"validation classes must be a subset of the training classes {sorted(train)}"
            )
        class_names = tuple(sorted(train))
        files = {
            "train": [train[c] for c in class_names],
            "val": [val.get(c, []) for c in class_names],
        }
        layout = "split"
    else:
        classes = _scan_classes(root, verify, skipped)
        _check_classes(classes, root)
        class_names = tuple(sorted(classes))
        files = {"all": [classes[c] for c in class_names]}
        layout = "flat"
    return FolderScan(root, layout, class_names, files, skipped)


def _read_split(
    per_class: list[list[Path]], image_size, skipped, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    items = [(f, c) for c, files in enumerate(per_class) for f in files]
    images = np.empty((len(items), image_size[0], image_size[1], 3), np.uint8)
    labels = np.empty(len(items), np.int32)
    keep = np.zeros(len(items), bool)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="img", leave=False)
    for i, (f, c) in enumerate(items):
        try:
            img = read_image_rgb(f)
        except ValueError as err:
            skipped.append((f, str(err).removeprefix(f"{f}: ")))
        except Exception as err:  # noqa: BLE001 - any other failure also skips the file
            skipped.append((f, f"cannot read the image ({type(err).__name__}: {err})"))
        else:
            images[i] = resize_images([img], image_size)[0]
            labels[i] = c
            keep[i] = True
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return images[keep], labels[keep]


def _native_size(scan: FolderScan) -> tuple[int, int]:
    from PIL import ExifTags, Image

    sizes = set()
    for per_class in scan.files.values():
        for files in per_class:
            for f in files:
                with Image.open(f) as img:
                    # EXIF orientations 5-8 turn the stored image by 90 degrees when read.
                    turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
                    sizes.add((img.width, img.height) if turned else (img.height, img.width))
                if len(sizes) > 1:
                    raise ValueError(
                        f"images in {scan.root} have different sizes (e.g. {sorted(sizes)}); "
                        "pass image_size=(height, width) to resize them all"
                    )
    return sizes.pop()


def load_image_folder(
    path: str | os.PathLike,
    image_size: tuple[int, int] | int | None = None,
    *,
    scan: FolderScan | None = None,
    progress: bool = True,
) -> ArrayDataset | tuple[ArrayDataset, ArrayDataset]:
    """Read an image folder into memory as uint8 RGB at one size.

    Args:
      path: the image folder (see :func:`scan_image_folder` for the layouts).
      image_size: ``(height, width)`` (or one int for a square) every image is resized to;
        None keeps the native size, which must then be the same for every image.
      scan: a :class:`FolderScan` of ``path`` from :func:`scan_image_folder` (scanned here when
        None). Files that fail to decode are appended to ``scan.skipped``.
      progress: show a tqdm progress bar while decoding.

    Returns:
      One :class:`ArrayDataset` (flat layout) or ``(train, val)`` (split layout): images
      ``(N, height, width, 3)`` uint8, labels ``(N,)`` int32, the class names.

    Raises:
      FileNotFoundError / ValueError: as :func:`scan_image_folder`; a bad ``image_size``; a
        class left without images after corrupt files were skipped.
    """
    if scan is None:
        scan = scan_image_folder(path)
    if image_size is None:
        image_size = _native_size(scan)
    if isinstance(image_size, int | np.integer) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(s, int | np.integer) and s > 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be (height, width) positive ints, got {image_size!r}")
    image_size = (int(image_size[0]), int(image_size[1]))
    out = {}
    for split, per_class in scan.files.items():
        images, labels = _read_split(per_class, image_size, scan.skipped, progress,
                                     f"reading {split}" if split != "all" else "reading images")
        counts = np.bincount(labels, minlength=scan.num_classes)
        if split != "val" and (counts == 0).any():
            empty = [scan.class_names[i] for i in np.flatnonzero(counts == 0)]
            raise ValueError(
                f"class(es) {empty} in {scan.root} have no decodable images left; "
                "see the skipped files: " + "; ".join(f"{p}: {r}" for p, r in scan.skipped[:5])
            )
        out[split] = ArrayDataset(images, labels, scan.class_names)
    if scan.layout == "split":
        return out["train"], out["val"]
    return out["all"]
