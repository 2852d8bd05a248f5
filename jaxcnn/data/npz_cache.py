"""The ``.npz`` cache of decoded datasets: a second load of the same request takes well under a
second (CIFAR-10) instead of decoding every image again.

An entry is ``<root>/<name>/<source>/<split>[_HxW].npz`` (uncompressed, written atomically)
holding images (N, H, W, C) uint8, labels (N,) int32, the class names and a ``meta`` record of
what produced it; an entry whose meta differs from the request's is ignored, so sources, data
dirs and archives never share one. ``root`` is ``$JAXCNN_CACHE_DIR`` if set, else
``<data_dir>/jaxcnn_cache`` if writable, else ``~/.cache/jaxcnn``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from jaxcnn.data.dataset import ArrayDataset

FORMAT = 2


def _sanitise(text: str) -> str:
    text = text.replace("%", "pct").replace("[", "_").replace("]", "").replace(":", "-")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def roots(data_dir: Path) -> list[Path]:
    """Where entries may live, in order of preference."""
    found = []
    env = os.environ.get("JAXCNN_CACHE_DIR")
    if env:
        found.append(Path(env).expanduser())
    found.append(data_dir / "jaxcnn_cache")
    found.append(Path("~/.cache/jaxcnn").expanduser())
    return found


def relpath(name: str, split: str, image_size: tuple[int, int] | None,
            source: str = "tfds") -> Path:
    """``<name>/<source>/<split>[_HxW].npz``; source is "tfds" or "official"."""
    stem = _sanitise(split)
    if image_size is not None:
        stem += f"_{image_size[0]}x{image_size[1]}"
    return Path(_sanitise(name)) / source / f"{stem}.npz"


def meta(source: str, name: str, split: str, image_size, **identity) -> dict:
    """Meta of an entry. ``identity`` names what identifies the data of ``source``: the data dir
    for ``"tfds"`` (``data_dir=``), the archive's checksum for ``"official"``
    (``archive_sha256=``)."""
    return {
        "format": FORMAT,
        "source": source,
        "name": name,
        "split": split,
        **identity,
        "image_size": list(image_size) if image_size is not None else None,
    }


def read(path: Path, want: dict) -> ArrayDataset | None:
    """The entry at ``path`` if its meta is ``want``; None if absent, foreign or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            if stored != want:  # same name and split, but from another data dir or size
                return None
            return ArrayDataset(z["images"], z["labels"], tuple(str(c) for c in z["class_names"]))
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt or foreign file never stops a load
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=3)
        return None


def lookup(where: list[Path], rel: Path, want: dict) -> ArrayDataset | None:
    """The first entry ``<root>/rel`` over ``where`` whose meta is ``want``, or None."""
    for root in where:
        hit = read(root / rel, want)
        if hit is not None:
            return hit
    return None


def write(where: list[Path], rel: Path, ds: ArrayDataset, info: dict) -> Path | None:
    """Write atomically to the first writable root; return the path or None."""
    for root in where:
        path = root / rel
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    images=ds.images,
                    labels=ds.labels,
                    class_names=np.array(ds.class_names, dtype=str),
                    meta=np.array(json.dumps(info)),
                )
            os.replace(tmp_name, path)
            return path
        except OSError:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
            continue
    warnings.warn(f"could not write a cache for {rel} in any of {where}", stacklevel=3)
    return None
