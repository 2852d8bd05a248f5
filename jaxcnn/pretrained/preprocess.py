"""Image preprocessing of the pretrained networks, in numpy + PIL (no jax).

``resize_shorter_crop_normalize`` is the standard ImageNet evaluation transform: resize the
shorter side (bicubic, as PIL does it), take the centre square, scale to floats, optionally
reorder the channels and normalise per channel. The settings of the ports, all with shorter
side 256 and centre crop 224:

* ``EFFICIENTNET_LITE0`` and ``MOBILENET_V2``: ``(x / 255 - 0.5) / 0.5``, inputs in [-1, 1]
  (Keras' ``preprocess_input`` mode ``"tf"``: ``x / 127.5 - 1``), not the usual ImageNet
  mean/std;
* ``RESNET50_CAFFE``: Keras' mode ``"caffe"`` (the original Caffe ResNet's convention): RGB ->
  BGR and subtract the per-channel ImageNet mean ``(103.939, 116.779, 123.68)`` (B, G, R) from
  the 0..255 pixel values, no scaling.

Every image goes through :func:`jaxcnn.data.images.to_rgb_uint8`, the library's one array
conversion (grayscale repeated, alpha dropped, PIL images of any mode, floats in [0, 1]).

This module imports only numpy and PIL (and ``jaxcnn/data/images.py``, which does the same) so
that tools running in other environments (the PyTorch reference in
``tools/make_efficientnet_golden.py``) can load it by file path and feed the reference exactly
the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

if __package__:  # imported as jaxcnn.pretrained.preprocess
    from jaxcnn.data.images import to_rgb_uint8
else:  # loaded by file path, without the jaxcnn package: load its sibling the same way
    import importlib.util as _importlib_util
    import pathlib as _pathlib
    import sys as _sys

    _spec = _importlib_util.spec_from_file_location(
        "_jaxcnn_images", _pathlib.Path(__file__).resolve().parents[1] / "data" / "images.py")
    _images = _importlib_util.module_from_spec(_spec)
    _sys.modules[_spec.name] = _images
    _spec.loader.exec_module(_images)
    to_rgb_uint8 = _images.to_rgb_uint8

__all__ = [
    "EFFICIENTNET_LITE0",
    "MOBILENET_V2",
    "RESNET50_CAFFE",
    "Preprocessing",
    "resize_shorter_crop_normalize",
    "to_rgb_uint8",
]


@dataclass(frozen=True)
class Preprocessing:
    """Settings of an ImageNet evaluation transform.

    The output is ``(x[..., order] / pixel_scale - mean) / std`` for pixel values ``x`` in
    0..255 after the resize and crop.

    Attributes:
      resize: the shorter image side after resizing (pixels).
      crop: side of the centre square cropped after resizing.
      mean / std: per-channel normalisation of ``x / pixel_scale``, in the output channel order.
      resample: PIL resampling filter for the resize.
      pixel_scale: the divisor applied to the 0..255 pixel values before ``mean``/``std``
        (255: [0, 1] floats; 1: raw pixel values, as Caffe-style networks expect).
      channel_order: ``"RGB"`` (unchanged) or ``"BGR"`` (channels reversed).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC
    pixel_scale: float = 255.0
    channel_order: str = "RGB"


EFFICIENTNET_LITE0 = Preprocessing(resize=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
MOBILENET_V2 = Preprocessing(resize=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
RESNET50_CAFFE = Preprocessing(
    resize=256,
    crop=224,
    mean=(103.939, 116.779, 123.68),
    std=(1.0, 1.0, 1.0),
    pixel_scale=1.0,
    channel_order="BGR",
)


def _resize_crop(image: np.ndarray, p: Preprocessing) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (crop, crop, 3) in 0..255 (PIL rounds and clips to uint8)."""
    h, w = image.shape[:2]
    # Shorter side to p.resize, longer side scaled and truncated (torchvision's Resize(int)).
    if h <= w:
        new_h, new_w = p.resize, max(int(p.resize * w / h), 1)
    else:
        new_h, new_w = max(int(p.resize * h / w), 1), p.resize
    if new_h < p.crop or new_w < p.crop:
        raise ValueError(f"resize {p.resize} is smaller than the crop {p.crop}")
    pil = Image.fromarray(image, mode="RGB")
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), resample=p.resample)
    top = int(round((new_h - p.crop) / 2.0))
    left = int(round((new_w - p.crop) / 2.0))
    pil = pil.crop((left, top, left + p.crop, top + p.crop))
    return np.asarray(pil, dtype=np.float32)


def resize_shorter_crop_normalize(images, p: Preprocessing = EFFICIENTNET_LITE0) -> np.ndarray:
    """Preprocess images for a pretrained network.

    Args:
      images: uint8 (N, H, W, 3) batch, one uint8 (H, W, 3) image, or a list of images of
        different sizes (arrays (H, W[, C]) or PIL images; each converted by
        :func:`to_rgb_uint8`: grayscale repeated, alpha dropped, floats in [0, 1] scaled).
      p: the settings (default: EfficientNet-Lite0's).

    Returns:
      float32 (N, crop, crop, 3): resized (shorter side ``p.resize``, bicubic), centre-cropped,
      channels in ``p.channel_order``, ``(x / p.pixel_scale - mean) / std``.
    """
    if p.channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR'; got {p.channel_order!r}")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence = list(images)
    elif isinstance(images, Image.Image) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3)
    ):
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        raise ValueError(
            "images must be a uint8 array (N, H, W, 3) or (H, W, 3), a PIL image, or a list of "
            f"them; got {type(images).__name__}"
        )
    if len(items) == 0:
        raise ValueError("no images to preprocess")
    mean = np.asarray(p.mean, np.float32)
    std = np.asarray(p.std, np.float32)
    out = np.empty((len(items), p.crop, p.crop, 3), np.float32)
    for i, image in enumerate(items):
        pixels = _resize_crop(to_rgb_uint8(image), p)
        if p.channel_order == "BGR":
            pixels = pixels[..., ::-1]
        out[i] = (pixels / np.float32(p.pixel_scale) - mean) / std
    return out
