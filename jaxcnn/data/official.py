"""CIFAR-10 and tf_flowers from their official archives, without TensorFlow.

:func:`jaxcnn.data.load_tfds` uses this module when the TFDS data dir holds no prepared copy of
``cifar10`` or ``tf_flowers`` and TensorFlow cannot be imported (so TFDS cannot prepare one).
It downloads the archive that TFDS itself would download (same URL, same sha256; see
:mod:`jaxcnn.data.download`), keeps it in a downloads folder, and decodes it with numpy and PIL
into the same :class:`~jaxcnn.data.ArrayDataset` the TFDS reader returns: uint8 images, TFDS's
label ids and class names, the same split syntax ('train', 'test', 'train[:45000]',
'train[45000:]', 'train[:10%]', 'train+test').

**Order differs from TFDS.** TFDS shuffles the examples when it prepares a dataset; this path
keeps the archive's own order:

* ``cifar10``: 'train' is ``data_batch_1.bin`` .. ``data_batch_5.bin`` (10,000 records each) in
  file order, 'test' is ``test_batch.bin``. The official batches are already in random class
  order, so slices such as 'train[:45000]' are as usable as TFDS's, but they are *different
  images* than the same slice of a TFDS-prepared copy.
* ``tf_flowers``: the photos in the order they are stored in ``flower_photos.tgz``, which groups
  them by class; a slice like 'train[:80%]' therefore misses whole classes. Hold out a
  stratified part with :meth:`ArrayDataset.split` instead. Photos differ in size, so
  ``image_size`` is required; each is decoded with PIL (converted to RGB) and resized with
  :func:`~jaxcnn.data.resize_images`.

Archives (the ones TFDS registers), overridable for mirrors and tests; a URL override needs
its checksum too:

* ``cifar10``: https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (170,052,171 bytes);
  ``JAXCNN_CIFAR10_URL`` + ``JAXCNN_CIFAR10_SHA256``.
* ``tf_flowers``: http://download.tensorflow.org/example_images/flower_photos.tgz
  (228,813,984 bytes); ``JAXCNN_TF_FLOWERS_URL`` + ``JAXCNN_TF_FLOWERS_SHA256``.

The archive is looked for (by its official file name) in ``<data_dir>/downloads/``, then
``$JAXCNN_CACHE_DIR/downloads/``, then ``~/.cache/jaxcnn/downloads/``, and downloaded into the
first of these that is writable. An archive placed there by hand is used without a download
(after its sha256 is checked).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from jaxcnn.data import download
from jaxcnn.data.dataset import ArrayDataset, resize_images
from jaxcnn.data.errors import DataNotFoundError, empty_split_message
from jaxcnn.data.splits import parse_split, split_names

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# TFDS's ClassLabel order for tf_flowers (not the alphabetical order of the folders).
TF_FLOWERS_CLASSES = ("dandelion", "daisy", "tulips", "sunflowers", "roses")

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CHUNK = 256


@dataclass(frozen=True)
class Archive:
    """One official archive and what it holds.

    Attributes:
      name: the TFDS dataset name ("cifar10").
      url, sha256, size: where to get it and its checksum / size in bytes (size None when the
        URL is overridden).
      filename: the official file name; the archive is stored under it.
      splits: the split names it provides.
      class_names: TFDS's class names, in label-id order.
      same_size: whether all images share one size (False: ``image_size`` is required).
      overridden: whether the URL or checksum came from the environment.
    """

    name: str
    url: str
    sha256: str
    size: int | None
    filename: str
    splits: tuple[str, ...]
    class_names: tuple[str, ...]
    same_size: bool
    overridden: bool = False

    @property
    def url_env(self) -> str:
        return f"JAXCNN_{self.name.upper()}_URL"

    @property
    def sha256_env(self) -> str:
        return f"JAXCNN_{self.name.upper()}_SHA256"


_ARCHIVES = {
    "cifar10": Archive(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        size=170052171,
        filename="cifar-10-binary.tar.gz",
        splits=("train", "test"),
        class_names=CIFAR10_CLASSES,
        same_size=True,
    ),
    "tf_flowers": Archive(
        name="tf_flowers",
        url="http://download.tensorflow.org/example_images/flower_photos.tgz",
        sha256="4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        size=228813984,
        filename="flower_photos.tgz",
        splits=("train",),
        class_names=TF_FLOWERS_CLASSES,
        same_size=False,
    ),
}

SUPPORTED = tuple(_ARCHIVES)


def archive(name: str) -> Archive:
    """The archive of dataset ``name`` with the environment overrides applied.

    ``JAXCNN_<NAME>_URL`` replaces the URL and then requires ``JAXCNN_<NAME>_SHA256`` (a mirror
    or a test archive has its own checksum; a download is never left unchecked).
    ``JAXCNN_<NAME>_SHA256`` alone replaces the checksum of the official URL.

    Raises:
      ValueError: an unsupported name, a URL override without its checksum, or a malformed
        checksum.
    """
    base = _ARCHIVES.get(name)
    if base is None:
        raise ValueError(
            f"no official archive is known for {name!r}; supported: {', '.join(SUPPORTED)}"
        )
    url = os.environ.get(base.url_env, "").strip()
    sha = os.environ.get(base.sha256_env, "").strip()
    if url and not sha:
        raise ValueError(
            f"{base.url_env} is set ({url}) but {base.sha256_env} is not; set it to the "
            "sha256 of the file at that URL (downloads are always checked)"
        )
    if not url and not sha:
        return base
    sha = download.check_sha256(sha, base.sha256_env)
    return replace(base, url=url or base.url, sha256=sha, size=None, overridden=True)


def downloads_dirs(data_dir: str | os.PathLike) -> list[Path]:
    """The folders searched for an archive, in order; downloads go to the first writable one.

    ``<data_dir>/downloads``, ``$JAXCNN_CACHE_DIR/downloads`` (when set),
    ``~/.cache/jaxcnn/downloads``.
    """
    dirs = [Path(data_dir).expanduser() / "downloads"]
    env = os.environ.get("JAXCNN_CACHE_DIR")
    if env:
        dirs.append(Path(env).expanduser() / "downloads")
    dirs.append(Path("~/.cache/jaxcnn").expanduser() / "downloads")
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def check_request(arc: Archive, split: str, image_size) -> None:
    """Everything about a request that can be checked before a download.

    Raises:
      ValueError: a malformed split, shard slicing, or a missing ``image_size`` for a dataset
        whose images differ in size.
      DataNotFoundError: a split name the archive does not provide.
    """
    parse_split(split)
    if "shard" in split:
        raise ValueError(
            f"split {split!r}: shard slicing needs a TFDS-prepared data dir; the official "
            f"{arc.name} archive is sliced by examples, e.g. 'train[:45000]' or 'train[:10%]'"
        )
    names = split_names(split)
    unknown = [n for n in names if n != "all" and n not in arc.splits]
    if unknown:
        raise DataNotFoundError(
            f"{arc.name!r} has no split {unknown[0]!r}: available splits are "
            f"{list(arc.splits)}. Use one of them (e.g. 'train[:45000]' / 'train[45000:]' to "
            "hold out part of train)."
        )
    if not arc.same_size and image_size is None:
        raise ValueError(
            f"images of {arc.name!r} differ in size; pass image_size=(height, width) to "
            "resize them all"
        )


def _failure(arc: Archive, split: str, data_dir: Path, folder: Path,
             err: download.DownloadError) -> DataNotFoundError:
    lines = [
        f"Could not get {arc.filename} for TFDS dataset {arc.name!r} (split {split!r}): "
        f"{err.reason}.",
        f"URL tried: {err.url}",
        f"(The data dir {data_dir} holds no prepared copy and TensorFlow is not installed, "
        "so jaxcnn downloads the official archive itself.)",
        "Fix, either:",
        "  * pass a TFDS data dir that holds a prepared copy: --data-dir DIR (Python: "
        "data_dir=DIR; or set TFDS_DATA_DIR=DIR);",
        f"  * or download {arc.filename} yourself (sha256 {arc.sha256}) and place it in "
        f"{folder}/ -- it is then used without a download;",
        f"  * or use a mirror: set {arc.url_env} and {arc.sha256_env}.",
    ]
    return DataNotFoundError("\n".join(lines))


def fetch_archive(
    arc: Archive,
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    download_missing: bool = True,
    progress: bool = True,
    timeout: float | None = None,
) -> Path | None:
    """The verified archive: an existing copy in :func:`downloads_dirs`, else a fresh download.

    Args:
      arc: from :func:`archive`.
      data_dir: the TFDS data dir (its ``downloads/`` folder is searched first).
      split: only for the error message.
      download_missing: False returns None instead of downloading a missing archive.
      progress: tqdm bar for the download.
      timeout: the stall timeout, see :func:`jaxcnn.data.download.fetch`.

    Raises:
      DataNotFoundError: the download failed or the checksum did not match; the message names
        the URL, the reason, ``--data-dir`` and the folder to place the archive in.
    """
    data_dir = Path(data_dir).expanduser()
    dirs = downloads_dirs(data_dir)
    for folder in dirs:
        path = folder / arc.filename
        if path.is_file():
            try:
                return download.fetch(arc.url, path, sha256=arc.sha256, progress=progress,
                                      timeout=timeout)
            except download.DownloadError as err:
                raise _failure(arc, split, data_dir, folder, err) from None
    if not download_missing:
        return None
    folder = _first_writable(dirs)
    if folder is None:
        raise DataNotFoundError(
            f"no writable folder to download {arc.filename} into (tried "
            f"{', '.join(str(d) for d in dirs)}); place the archive in one of them, or pass "
            "--data-dir DIR with a prepared TFDS copy"
        )
    try:
        return download.fetch(arc.url, folder / arc.filename, sha256=arc.sha256, size=arc.size,
                              progress=progress, timeout=timeout,
                              desc=f"downloading {arc.filename}")
    except download.DownloadError as err:
        raise _failure(arc, split, data_dir, folder, err) from None


def _first_writable(dirs: list[Path]) -> Path | None:
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


def decode_cifar10_records(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary records -> (images (N, 32, 32, 3) uint8, labels (N,) int32).

    Each record is 1 label byte, then the R, G and B planes (1,024 bytes each, row-major).
    """
    if len(data) % _CIFAR_RECORD:
        raise ValueError(
            f"CIFAR-10 batch of {len(data):,} bytes is not a whole number of "
            f"{_CIFAR_RECORD}-byte records"
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = rows[:, 0].astype(np.int32)
    images = np.ascontiguousarray(rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def decode_cifar10(path: str | os.PathLike, splits=("train", "test"),
                   progress: bool = True) -> dict[str, ArrayDataset]:
    """Decode ``cifar-10-binary.tar.gz``; returns {split: ArrayDataset} for ``splits``.

    'train' is data_batch_1..5 in that order, 'test' is test_batch; the class names in
    ``batches.meta.txt`` must be TFDS's.
    """
    from tqdm.auto import tqdm

    wanted = {}
    if "train" in splits:
        wanted.update({f"data_batch_{i}.bin": "train" for i in range(1, 6)})
    if "test" in splits:
        wanted["test_batch.bin"] = "test"
    wanted_all = {**wanted, "batches.meta.txt": "meta"}
    found: dict[str, bytes] = {}
    with (tarfile.open(path, "r|gz") as tar,
          tqdm(total=len(wanted_all), desc="decoding cifar10", unit="file",
               disable=not progress, leave=False) as bar):
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in wanted_all and base not in found:
                f = tar.extractfile(member)
                found[base] = f.read() if f is not None else b""
                bar.update(1)
    missing = [b for b in wanted_all if b not in found]
    if missing:
        raise ValueError(f"{path} is not a CIFAR-10 binary archive: it lacks {missing}")
    names = tuple(n.strip() for n in found["batches.meta.txt"].decode().split("\n") if n.strip())
    if names != CIFAR10_CLASSES:
        raise ValueError(
            f"{path}: batches.meta.txt names the classes {names}, expected {CIFAR10_CLASSES}"
        )
    out = {}
    for split in ("train", "test"):
        files = [b for b, s in wanted.items() if s == split]
        if not files:
            continue
        parts = [decode_cifar10_records(found.pop(b)) for b in files]  # file order kept
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        out[split] = ArrayDataset(images, labels, CIFAR10_CLASSES)
    return out


def decode_tf_flowers(path: str | os.PathLike, image_size: tuple[int, int],
                      progress: bool = True) -> dict[str, ArrayDataset]:
    """Decode ``flower_photos.tgz``: every ``*.jpg`` in archive order, labelled by its folder.

    Returns ``{"train": ArrayDataset}`` with images (N, H, W, 3) uint8 at ``image_size`` and
    TFDS's label ids (:data:`TF_FLOWERS_CLASSES`).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    ids = {c: i for i, c in enumerate(TF_FLOWERS_CLASSES)}
    h, w = image_size
    with tarfile.open(path, "r:gz") as tar:
        # Like TFDS: every member whose name ends in ".jpg", labelled by its folder (lower-case).
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        n = len(members)
        images = np.empty((n, h, w, 3), np.uint8)
        labels = np.empty(n, np.int32)
        with tqdm(total=n, desc="decoding tf_flowers", unit="img", disable=not progress,
                  leave=False) as bar:
            for start in range(0, n, _CHUNK):
                chunk = []
                for i, member in enumerate(members[start : start + _CHUNK], start):
                    folder = member.name.rsplit("/", 2)[-2].lower() if "/" in member.name else ""
                    if folder not in ids:
                        raise ValueError(
                            f"{path}: {member.name} is in folder {folder!r}, not one of the "
                            f"tf_flowers classes {TF_FLOWERS_CLASSES}"
                        )
                    labels[i] = ids[folder]
                    data = tar.extractfile(member).read()
                    with Image.open(io.BytesIO(data)) as img:
                        chunk.append(np.asarray(img.convert("RGB")))
                images[start : start + len(chunk)] = resize_images(chunk, (h, w))
                bar.update(len(chunk))
    return {"train": ArrayDataset(images, labels, TF_FLOWERS_CLASSES)}


def select(split: str, datasets: dict[str, ArrayDataset], name: str = "dataset") -> ArrayDataset:
    """The examples of TFDS split string ``split`` from whole splits ``{name: ArrayDataset}``.

    Slicing follows TFDS exactly (its own parser and its rounding of percentages); parts joined
    with '+' are concatenated in order. A split that does not fit the sizes, or selects no
    example at all (``'train[:0]'``), is a ValueError.
    """

    class _Info:  # what tfds's to_absolute reads from a SplitInfo
        def __init__(self, n):
            self.num_examples = n
            self.shard_lengths = [n]

    instruction = parse_split(split)
    sizes = ", ".join(f"{k!r}: {len(v):,}" for k, v in datasets.items())
    try:
        parts = instruction.to_absolute({k: _Info(len(v)) for k, v in datasets.items()})
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"split {split!r} does not fit {name} ({sizes} examples): {first}"
        ) from None
    pieces = [datasets[p.splitname] for p in parts]
    slices = [slice(p.from_, p.to) for p in parts]
    if not any(len(range(*s.indices(len(d)))) for d, s in zip(pieces, slices, strict=True)):
        raise ValueError(empty_split_message(split, name, sizes))
    if len(pieces) == 1:
        ds = pieces[0]
        return ArrayDataset(ds.images[slices[0]], ds.labels[slices[0]], ds.class_names)
    images = np.concatenate([d.images[s] for d, s in zip(pieces, slices, strict=True)])
    labels = np.concatenate([d.labels[s] for d, s in zip(pieces, slices, strict=True)])
    return ArrayDataset(images, labels, pieces[0].class_names)


def load_archive(
    arc: Archive,
    path: str | os.PathLike,
    split: str,
    *,
    image_size: tuple[int, int] | None = None,
    progress: bool = True,
) -> ArrayDataset:
    """Decode the verified archive at ``path`` and return split ``split``.

    Images keep their stored size unless ``image_size`` is given (then every image is resized
    with :func:`~jaxcnn.data.resize_images`, as the TFDS reader does).
    """
    check_request(arc, split, image_size)
    names = split_names(split)
    needed = arc.splits if "all" in names else tuple(s for s in arc.splits if s in names)
    if arc.name == "cifar10":
        ds = select(split, decode_cifar10(path, needed, progress=progress), arc.name)
        if image_size is not None:
            ds = ArrayDataset(resize_images(ds.images, image_size), ds.labels, ds.class_names)
        return ds
    if arc.name == "tf_flowers":
        return select(split, decode_tf_flowers(path, image_size, progress=progress), arc.name)
    raise ValueError(f"no decoder for {arc.name!r}")  # pragma: no cover - see archive()

