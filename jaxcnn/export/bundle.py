"""A loaded bundle: images in (arrays, lists or files), class probabilities out.

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

import os
from pathlib import Path

import numpy as np

from jaxcnn import evaluate
from jaxcnn.evaluate.prediction import build_forward
from jaxcnn.evaluate.tta import check_tta_mode

DEFAULT_BATCH_SIZE = 64


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
        batch_size: int = DEFAULT_BATCH_SIZE,
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
        self._forward = build_forward(model.apply, self.mean, self.std, tta)

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
