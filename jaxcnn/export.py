"""Self-contained model bundles: save a trained model once, load it anywhere, predict on images.

A bundle is a directory with two files:

``bundle.json``
    format version, model name and options (enough to rebuild the module through
    ``jaxcnn.models.create``), number and names of the classes, preprocessing (input size
    ``(H, W)``, channels, per-channel ``mean``/``std`` on the [0, 1] scale), training metrics,
    the jaxcnn version and the creation time (UTC, ISO 8601), and ``tta``: the test-time
    augmentation ``predict`` applies (one of ``jaxcnn.evaluate.TTA_MODES``; a bundle written
    before the key existed reads as ``"none"``).
``variables.msgpack``
    ``flax.serialization.to_bytes`` of the variables (``params`` and, where BatchNorm is used,
    ``batch_stats``) as host numpy arrays; floating leaves are stored as float32.

Usage::

    from jaxcnn import export
    export.save("runs/cnn3/bundle", model_name="cnn3", model_options={}, variables=variables,
                class_names=names, preprocessing=dict(input_size=(32, 32), mean=MEAN, std=STD),
                metrics={"test_accuracy": 0.88}, tta="flip")
    bundle = export.load("runs/cnn3/bundle")
    probs = bundle.predict(images_uint8)          # (N, num_classes), rows sum to 1
    bundle.top_k("cat.jpg", k=3)                  # [[("cat", 0.91), ("dog", 0.05), ...]]

``save`` is atomic: the bundle is written to a temporary sibling directory and renamed into
place, so a reader never sees a half-written bundle, and an existing bundle at ``path`` is
replaced only after the new one is complete.

Images given to ``Bundle.predict`` are uint8 (0-255): a batch ``(N, H, W, C)``, one image
``(H, W, C)`` or ``(H, W)``, grayscale batches ``(N, H, W)``, lists of differently sized images,
or image file paths (read by :func:`load_image`). They are converted to the model's channels
(RGBA drops alpha, gray is repeated to RGB, RGB becomes luminance for 1-channel models),
resized to the bundle's input size when they differ, normalised on device and run through a
jitted forward in fixed-size batches (the last one padded), so each bundle compiles its forward
pass once. The forward applies the bundle's TTA (:func:`jaxcnn.evaluate.tta_logits`: mirrored
and shifted views, logits averaged), so the bundle alone reproduces the accuracy measured with
it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn import evaluate
from jaxcnn.evaluate.prediction import _as_stats, _build_forward
from jaxcnn.evaluate.tta import check_tta_mode

__all__ = [
    "BUNDLE_JSON",
    "FORMAT_VERSION",
    "VARIABLES_FILE",
    "Bundle",
    "load",
    "load_image",
    "save",
]

FORMAT_VERSION = 1
"""Version of the bundle layout written by ``save``; ``load`` reads only this version."""

BUNDLE_JSON = "bundle.json"
VARIABLES_FILE = "variables.msgpack"

_DEFAULT_BATCH_SIZE = 64


# --------------------------------------------------------------------------------------------
# JSON encoding of model options and metrics
# --------------------------------------------------------------------------------------------


def _encode_option(value, where: str):
    """Model option -> JSON value. Tuples/lists become lists, dtypes ``{"__dtype__": name}``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.dtype):
        return value.item()
    if isinstance(value, list | tuple):
        return [_encode_option(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _encode_option(v, f"{where}.{k}") for k, v in value.items()}
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


def _decode_option(value):
    """JSON value -> model option (lists become tuples, so Flax module fields stay hashable)."""
    if isinstance(value, list):
        return tuple(_decode_option(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"__dtype__"}:
            return jnp.dtype(value["__dtype__"])
        return {k: _decode_option(v) for k, v in value.items()}
    return value


def _json_default(obj):
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
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_preprocessing(preprocessing) -> dict:
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
    mean = list(_as_stats(preprocessing["mean"], "mean"))
    std = list(_as_stats(preprocessing["std"], "std"))
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


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("class_names is empty; give one name per class")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"class_names must be unique; repeated: {dup}")
    return names


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = traverse_util.flatten_dict(flax.serialization.to_state_dict(tree), sep="/")
    return {k: tuple(np.shape(v)) for k, v in flat.items()}


def _check_variables(variables, template, model_name: str) -> None:
    """Raise ValueError unless ``variables`` has exactly the leaves and shapes of ``template``."""
    got, want = _flat_shapes(variables), _flat_shapes(template)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if wrong:
            parts.append(
                "wrong shapes "
                + ", ".join(f"{k}: {got[k]} (expected {want[k]})" for k in wrong[:5])
            )
        raise ValueError(
            f"variables do not fit model {model_name!r} with these options, num_classes and "
            f"input size: {'; '.join(parts)}"
        )


def _build(model_name: str, num_classes: int, options: dict, input_shape: tuple):
    """Create the model and the shapes of its variables, without running or compiling it."""
    from jaxcnn import models

    model = models.create(model_name, num_classes=num_classes, **options)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    template = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), template, x)
    if tuple(out.shape) != (1, num_classes):
        raise ValueError(
            f"model {model_name!r} gives outputs of shape {tuple(out.shape)} for a "
            f"{input_shape} input; expected (1, {num_classes}) logits"
        )
    return model, template


def _to_host(variables):
    """Variables as a plain dict of host numpy arrays; floating leaves become float32."""

    def convert(a):
        a = np.asarray(jax.device_get(a))
        return a.astype(np.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(convert, flax.serialization.to_state_dict(variables))


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------


def save(
    path,
    *,
    model_name: str,
    model_options: dict | None,
    variables,
    class_names: Sequence[str],
    preprocessing: dict,
    metrics: dict | None = None,
    tta: str = "none",
) -> Path:
    """Write a self-contained model bundle directory at ``path`` (atomically).

    Args:
      path: the bundle directory (created; an existing bundle there is replaced).
      model_name: a name registered in ``jaxcnn.models`` (e.g. ``"cnn3"``).
      model_options: keyword options for ``jaxcnn.models.create`` (numbers, strings, dtypes,
        tuples); ``num_classes`` comes from ``class_names``.
      variables: ``{"params": ..., "batch_stats": ...}`` as returned by ``model.init``/training.
      class_names: ``K`` unique names, index ``i`` naming logit ``i``.
      preprocessing: ``dict(input_size=(H, W), mean=(...), std=(...))`` (mean/std per channel on
        the [0, 1] scale; optional ``channels``, default ``len(mean)``); extra keys are kept.
      metrics: optional JSON-friendly dict of figures of merit (e.g. test accuracy).
      tta: the test-time augmentation the loaded bundle's ``predict`` applies, one of
        ``jaxcnn.evaluate.TTA_MODES`` (``"none"``, ``"flip"``, ``"flip_translate"``); store the
        mode the reported accuracy was measured with, so the bundle reproduces it.

    Returns:
      The bundle directory as a ``Path``.

    Raises:
      ValueError: unknown model, unserialisable options, variables that do not fit the model,
        bad preprocessing, class names or TTA mode, or ``path`` holding something that is not
        a bundle.
    """
    path = Path(path)
    check_tta_mode(tta)
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a registered model name, got {model_name!r}")
    options = dict(model_options or {})
    if "num_classes" in options:
        raise ValueError("model_options must not contain num_classes; it is len(class_names)")
    encoded_options = _encode_option(options, "model_options")
    names = _check_class_names(class_names)
    prep = _check_preprocessing(preprocessing)
    input_shape = (*prep["input_size"], prep["channels"])

    _, template = _build(model_name, len(names), _decode_option(encoded_options), input_shape)
    _check_variables(variables, template, model_name)
    host = _to_host(variables)

    import jaxcnn

    info = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_options": encoded_options,
        "num_classes": len(names),
        "class_names": names,
        "preprocessing": prep,
        "metrics": metrics or {},
        "tta": tta,
        "jaxcnn_version": jaxcnn.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        text = json.dumps(info, indent=2, default=_json_default, allow_nan=True)
    except TypeError as err:
        raise ValueError(f"metrics or preprocessing are not JSON serialisable: {err}") from err
    payload = flax.serialization.to_bytes(host)

    if path.exists():
        if not path.is_dir():
            raise ValueError(f"bundle path {path} is an existing file; pass a directory path")
        if any(path.iterdir()) and not (path / BUNDLE_JSON).is_file():
            raise ValueError(
                f"{path} is a non-empty folder that is not a jaxcnn bundle; refusing to "
                "overwrite it. Choose a new or empty folder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        for name, data in ((VARIABLES_FILE, payload), (BUNDLE_JSON, text.encode())):
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
    return path


def load(path, *, batch_size: int = _DEFAULT_BATCH_SIZE, tta: str | None = None) -> Bundle:
    """Read a bundle written by ``save`` and rebuild its model.

    Args:
      path: the bundle directory (or its ``bundle.json``).
      batch_size: fixed batch size of the bundle's jitted forward.
      tta: None: predict with the TTA mode stored in the bundle (``"none"`` for bundles
        without one); a mode of ``jaxcnn.evaluate.TTA_MODES`` overrides it.

    Returns:
      A ``Bundle`` ready to ``predict``.

    Raises:
      FileNotFoundError: the directory, ``bundle.json`` or ``variables.msgpack`` is missing.
      ValueError: unreadable files, a different format version, variables that do not fit
        the model described in ``bundle.json``, or an unknown TTA mode.
    """
    if tta is not None:
        check_tta_mode(tta)
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
    json_path, var_path = path / BUNDLE_JSON, path / VARIABLES_FILE
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{json_path} not found: {path} is not a complete jaxcnn bundle "
            "(write one with jaxcnn.export.save)"
        )
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
        names = _check_class_names(info["class_names"])
        prep = _check_preprocessing(info["preprocessing"])
        model_name = info["model_name"]
        options = _decode_option(info.get("model_options", {}))
    except KeyError as err:
        raise ValueError(f"{json_path} lacks the field {err}; re-export the bundle") from err
    stored_tta = info.get("tta", "none")  # bundles written before TTA existed: none
    try:
        check_tta_mode(stored_tta)
    except ValueError as err:
        raise ValueError(f"{json_path}: {err}; re-export the bundle") from err
    if info.get("num_classes", len(names)) != len(names):
        raise ValueError(
            f"{json_path}: num_classes={info['num_classes']} but {len(names)} class names"
        )
    input_shape = (*prep["input_size"], prep["channels"])
    model, template = _build(model_name, len(names), options, input_shape)
    try:
        restored = flax.serialization.from_bytes(template, var_path.read_bytes())
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{var_path} does not hold variables for model {model_name!r} as described in "
            f"{json_path}: {err}"
        ) from err
    _check_variables(restored, template, model_name)
    variables = jax.tree.map(lambda a, t: jnp.asarray(a, dtype=t.dtype), restored, template)
    return Bundle(
        path=path,
        info=info,
        model=model,
        variables=variables,
        class_names=names,
        preprocessing=prep,
        model_options=options,
        batch_size=batch_size,
        tta=stored_tta if tta is None else tta,
    )


# --------------------------------------------------------------------------------------------
# Images in, probabilities out
# --------------------------------------------------------------------------------------------


def load_image(path) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``: :func:`jaxcnn.data.images.read_image_rgb`,
    the library's one image reader (EXIF orientation applied, grayscale repeated, alpha dropped;
    ``Bundle.prepare`` turns RGB into luminance for 1-channel models).

    Every pixel is decoded: a file PIL cannot identify or decode, a truncated JPEG included,
    raises ``ValueError`` naming the file; a missing one ``FileNotFoundError``.
    """
    from jaxcnn.data.images import read_image_rgb

    return read_image_rgb(path)


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(N, h, w, C)`` -> ``(N, H, W, C)`` (PIL bilinear, antialiased when shrinking)."""
    if images.shape[1:3] == tuple(size):
        return images
    from jaxcnn.data import resize_images

    return resize_images(images, tuple(size))


def _as_uint8(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{where}: integer pixel values must be in [0, 255]")
        return arr.astype(np.uint8)
    raise ValueError(
        f"{where}: images must be uint8 (0-255), got dtype {arr.dtype}; for floats in [0, 1] "
        "pass (np.clip(x, 0, 1) * 255).round().astype(np.uint8)"
    )


def _fix_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """``(N, H, W, c)`` uint8 -> ``(N, H, W, channels)``: RGBA drops alpha, gray <-> RGB."""
    c = images.shape[-1]
    if c == 4 or c == 2:  # RGBA / gray+alpha: drop alpha
        images = images[..., : c - 1]
        c -= 1
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:  # ITU-R BT.601 luma, as PIL's convert("L")
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(
        f"images have {images.shape[-1]} channels but the model expects {channels}; pass "
        "grayscale (1), RGB (3) or RGBA (4) images"
    )


class Bundle:
    """A loaded model bundle: the model, its variables, class names and preprocessing.

    Attributes:
      path: the bundle directory.
      model_name, model_options: how the module was built (``jaxcnn.models.create``).
      model: the ``flax.linen.Module``; variables: its variables on the default device.
      class_names: list of ``K`` names; num_classes: ``K``.
      input_size: ``(H, W)`` the model expects; channels: ``C``.
      mean, std: normalisation on the [0, 1] scale; preprocessing: the full dict.
      metrics: the figures of merit stored at export; info: the whole ``bundle.json``.
      batch_size: the fixed batch size of the jitted forward.
      tta: the test-time augmentation ``predict`` applies (``jaxcnn.evaluate.TTA_MODES``): the
        bundle's stored mode unless ``load(..., tta=...)`` overrode it.
    """

    def __init__(
        self,
        *,
        path: Path,
        info: dict,
        model,
        variables,
        class_names: list[str],
        preprocessing: dict,
        model_options: dict,
        batch_size: int = _DEFAULT_BATCH_SIZE,
        tta: str = "none",
    ):
        check_tta_mode(tta)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.path = Path(path)
        self.info = info
        self.model = model
        self.variables = variables
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.model_name = info["model_name"]
        self.model_options = model_options
        self.metrics = info.get("metrics", {})
        self.batch_size = batch_size
        self.input_size = tuple(preprocessing["input_size"])
        self.channels = int(preprocessing["channels"])
        self.mean = tuple(preprocessing["mean"])
        self.std = tuple(preprocessing["std"])
        self.tta = tta
        self._forward = _build_forward(model.apply, self.mean, self.std, tta)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (
            f"Bundle({self.model_name!r}, classes={self.num_classes}, "
            f"input={self.input_size + (self.channels,)}, tta={self.tta!r}, path='{self.path}')"
        )

    def prepare(self, images) -> np.ndarray:
        """Images in any accepted form -> uint8 ``(N, H, W, C)`` at the model's size/channels.

        Accepts: a uint8 array ``(N, H, W, C)``, ``(H, W, C)`` (one image; C in 1, 3, 4),
        ``(H, W)`` (one gray image) or ``(N, H, W)`` (gray batch); a path to an image file;
        or a list of any of these (sizes may differ).
        """
        if isinstance(images, str | os.PathLike):
            images = load_image(images)
        if isinstance(images, list | tuple):
            if not images:
                raise ValueError("images is an empty list; pass at least one image")
            parts = [self.prepare(img) for img in images]
            return np.concatenate(parts, axis=0)
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None, ..., None]
        elif arr.ndim == 3:
            arr = arr[None] if arr.shape[-1] in (1, 2, 3, 4) else arr[..., None]
        elif arr.ndim != 4:
            raise ValueError(
                f"images must be (N, H, W, C), (H, W, C), (N, H, W) or (H, W); got {arr.shape}"
            )
        if arr.shape[0] == 0:
            raise ValueError("images is empty (N == 0); pass at least one image")
        if min(arr.shape[1:3]) < 1:
            raise ValueError(f"images have an empty spatial size {arr.shape[1:3]}")
        arr = _as_uint8(arr, "predict")
        arr = _fix_channels(arr, self.channels)
        return _resize(np.ascontiguousarray(arr), self.input_size)

    def predict_logits(self, images) -> np.ndarray:
        """Logits float32 ``(N, num_classes)`` for images in any form ``prepare`` accepts,
        averaged over the views of the bundle's TTA mode (``self.tta``)."""
        batch = self.prepare(images)
        return evaluate.run_batched(self._forward, self.variables, batch, self.batch_size)

    def predict(self, images) -> np.ndarray:
        """Class probabilities float32 ``(N, num_classes)`` (softmax of the logits)."""
        return evaluate.softmax(self.predict_logits(images))

    def top_k(self, images, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each image, the ``k`` most probable ``(class_name, probability)``, best first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be an int in [1, {self.num_classes}], got {k!r}")
        probs = self.predict(images)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.class_names[j], float(p[j])) for j in row]
            for p, row in zip(probs, order, strict=True)
        ]
