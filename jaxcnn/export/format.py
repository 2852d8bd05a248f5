"""The bundle on disk: file names, format version, the JSON encoding of ``bundle.json``'s fields
and their checks, reading ``bundle.json`` back, and the atomic write of a bundle directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.evaluate.prediction import as_stats
from jaxcnn.evaluate.tta import check_tta_mode

FORMAT_VERSION = 1
"""Version of the bundle layout written by ``save``; ``load`` reads only this version."""

BUNDLE_JSON = "bundle.json"
VARIABLES_FILE = "variables.msgpack"


# --------------------------------------------------------------------------------------------
# JSON encoding of model options and metrics


def encode_option(value, where: str):
    """Model option -> JSON value. Tuples/lists become lists, dtypes ``{"__dtype__": name}``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.dtype):
        return value.item()
    if isinstance(value, list | tuple):
        return [encode_option(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): encode_option(v, f"{where}.{k}") for k, v in value.items()}
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is not None and (isinstance(value, np.dtype | type) or hasattr(value, "dtype")):
        return {"__dtype__": dtype.name}
    raise ValueError(
        f"model option {where}={value!r} cannot be stored in bundle.json; options must be "
        "numbers, strings, bools, None, dtypes, or lists/tuples/dicts of those"
    )


def decode_option(value):
    """JSON value -> model option (lists become tuples, so Flax module fields stay hashable)."""
    if isinstance(value, list):
        return tuple(decode_option(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"__dtype__"}:
            return jnp.dtype(value["__dtype__"])
        return {k: decode_option(v) for k, v in value.items()}
    return value


def json_default(obj):
    """Make numpy / jax scalars and arrays, and paths, JSON serialisable (for metrics)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------
# Field checks (on save and on load)


def check_preprocessing(preprocessing) -> dict:
    """``dict(input_size=(H, W), mean, std[, channels, ...])`` -> its stored form: lists of
    numbers, ``channels`` filled in (default ``len(mean)``); extra keys are kept."""
    if not isinstance(preprocessing, dict):
        raise ValueError(
            "preprocessing must be a dict like dict(input_size=(32, 32), mean=(...), std=(...)), "
            f"got {preprocessing!r}"
        )
    missing = [k for k in ("input_size", "mean", "std") if k not in preprocessing]
    if missing:
        raise ValueError(
            f"preprocessing is missing {missing}; expected keys input_size=(H, W), mean, std"
        )
    size = preprocessing["input_size"]
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in size)
        or min(size) < 1
    ):
        raise ValueError(f"preprocessing input_size must be (H, W) positive ints, got {size!r}")
    mean = list(as_stats(preprocessing["mean"], "mean"))
    std = list(as_stats(preprocessing["std"], "std"))
    channels = preprocessing.get("channels", max(len(mean), len(std)))
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer) or channels < 1:
        raise ValueError(f"preprocessing channels must be a positive int, got {channels!r}")
    for name, stats in (("mean", mean), ("std", std)):
        if len(stats) not in (1, channels):
            raise ValueError(
                f"preprocessing {name} has {len(stats)} values for {channels} channels; "
                "give one value per channel (or one for all)"
            )
    out = {k: v for k, v in preprocessing.items() if k not in ("input_size", "mean", "std")}
    out.update(input_size=[int(size[0]), int(size[1])], channels=int(channels), mean=mean, std=std)
    return out


def check_class_names(class_names) -> list[str]:
    """``K`` unique class names as a list of strings."""
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty; give one name per class")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"class_names must be unique; repeated: {dup}")
    return names


# --------------------------------------------------------------------------------------------
# Reading and writing the directory


def bundle_dir(path) -> Path:
    """The bundle directory of ``path`` (the directory or its ``bundle.json``), checked to hold
    both files; ``FileNotFoundError`` naming what is missing otherwise."""
    path = Path(path)
    if path.is_file() and path.name == BUNDLE_JSON:
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(
            f"no model bundle at {path}: the folder does not exist. Pass the directory written "
            "by jaxcnn.export.save (e.g. <workdir>/<model>/bundle)"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file, not a bundle directory holding {BUNDLE_JSON}")
    if not (path / BUNDLE_JSON).is_file():
        raise FileNotFoundError(
            f"{path / BUNDLE_JSON} not found: {path} is not a complete jaxcnn bundle "
            "(write one with jaxcnn.export.save)"
        )
    return path


def read_info(path: Path) -> tuple[dict, dict]:
    """``bundle.json`` of the bundle directory ``path``, checked: this format version, a weights
    file beside it, valid class names, preprocessing and TTA mode (``"none"`` when absent:
    bundles written before the key existed).

    Returns:
      ``(info, fields)``: the whole JSON object as stored, and ``class_names``,
      ``preprocessing``, ``model_name``, ``model_options`` (decoded) and ``tta`` checked.
    """
    json_path, var_path = path / BUNDLE_JSON, path / VARIABLES_FILE
    try:
        info = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{json_path} is not valid JSON ({err}); re-export the bundle") from err
    if not isinstance(info, dict):
        raise ValueError(f"{json_path} does not hold a JSON object; re-export the bundle")
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{json_path} has bundle format version {version!r}, but this jaxcnn reads version "
            f"{FORMAT_VERSION}; re-export the model with this jaxcnn or use the jaxcnn version "
            f"that wrote it ({info.get('jaxcnn_version', 'unknown')})"
        )
    if not var_path.is_file():
        raise FileNotFoundError(
            f"{var_path} not found: the bundle at {path} has no weights; re-export it"
        )
    try:
        names = check_class_names(info["class_names"])
        checked = dict(
            class_names=names,
            preprocessing=check_preprocessing(info["preprocessing"]),
            model_name=info["model_name"],
            model_options=decode_option(info.get("model_options", {})),
        )
    except KeyError as err:
        raise ValueError(f"{json_path} lacks the field {err}; re-export the bundle") from err
    try:
        checked["tta"] = check_tta_mode(info.get("tta", "none"))
    except ValueError as err:
        raise ValueError(f"{json_path}: {err}; re-export the bundle") from err
    if info.get("num_classes", len(names)) != len(names):
        raise ValueError(
            f"{json_path}: num_classes={info['num_classes']} but {len(names)} class names"
        )
    return info, checked


def check_writable(path: Path) -> None:
    """Refuse a ``path`` that is a file or a non-empty folder that is not a bundle."""
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"bundle path {path} is an existing file; pass a directory path")
        if any(path.iterdir()) and not (path / BUNDLE_JSON).is_file():
            raise ValueError(
                f"{path} is a non-empty folder that is not a jaxcnn bundle; refusing to "
                "overwrite it. Choose a new or empty folder"
            )


def write_atomic(path: Path, files: dict[str, bytes]) -> None:
    """Write ``{name: bytes}`` as the directory ``path``, atomically.

    The files go to a temporary sibling directory (fsynced) that is renamed into place, so a
    reader never sees a half-written bundle; an existing one at ``path`` is replaced only after
    the new one is complete.
    """
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
