"""The one image reader and the one array conversion: files and arrays to uint8 RGB.

::

    from jaxcnn.data.images import read_image_rgb, to_rgb_uint8

    x = read_image_rgb("photo.jpg")          # (H, W, 3) uint8, upright, every pixel decoded
    y = to_rgb_uint8(gray_or_rgba_array)     # (H, W, 3) uint8

Every path that turns an image into pixels goes through here: image folders
(:mod:`jaxcnn.data.image_folder`), bundle prediction on files (:func:`jaxcnn.export.load_image`,
``python -m jaxcnn.predict``) and the pretrained networks' preprocessing
(:mod:`jaxcnn.pretrained.preprocess`).

What a file becomes:

* **orientation**: the EXIF Orientation tag is applied (``PIL.ImageOps.exif_transpose``), so a
  phone photo stored sideways comes out upright, as a viewer shows it; its ``(H, W)`` are then
  those of the upright image.
* **grayscale** (``L``, bilevel ``1``) is repeated to three channels; **16-bit grayscale**
  (``I;16``, ``I``, as PNG stores it) is scaled from 0..65535 to 0..255 (``round(v / 257)``;
  PIL's own conversion would clip everything above 255 to white).
* **alpha is dropped, not composited** (``RGBA``, ``LA``, ``PA``, palette ``P`` with a
  transparent colour): the colour stored under each pixel is kept, whatever its opacity. That
  is what ``PIL.Image.convert("RGB")`` does, and so what Keras' ``load_img`` and torchvision's
  ``ImageFolder`` feed the networks whose weights :mod:`jaxcnn.pretrained` ports; compositing
  on white would give transparent regions a colour those networks never saw in training.
* **palette** images take their palette colours; **CMYK** (JPEG from print workflows) and
  other modes are converted by PIL (no ICC colour management).
* **errors**: a missing file is ``FileNotFoundError``; a file PIL cannot identify, decode or
  convert is ``ValueError`` naming the file. Every pixel is decoded, and a truncated file (a
  JPEG cut short by an interrupted copy or download) is an error even when PIL's global
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set (it would fill the missing part with grey).

This module imports only numpy, PIL and the standard library: ``jaxcnn/pretrained/preprocess.py``
uses it and is loaded by file path in environments without jax (``tools/``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "decode_image",
    "pil_to_rgb_uint8",
    "read_image_rgb",
    "to_rgb_uint8",
]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

_STRICT_LOCK = threading.Lock()


@contextlib.contextmanager
def _strict_truncation():
    """PIL raises on truncated files inside this block, whatever the global setting."""
    with _STRICT_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def decode_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file, decode all of its pixels and apply its EXIF orientation.

    Returns:
      A loaded ``PIL.Image`` in the file's own mode (the file is closed), upright.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: PIL cannot identify the file, or decoding fails, truncated files included
        (PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is ignored); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} not found")
    try:
        with _strict_truncation(), Image.open(path) as img:
            img.load()
            upright = img.copy()
        ImageOps.exif_transpose(upright, in_place=True)
        return upright
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image PIL can identify (corrupt, or not an image "
                         "format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's decode failures
        what = ("truncated or corrupt image, the data ends early" if "truncated" in
                str(err).lower() else "cannot decode the image")
        raise ValueError(f"{path}: {what} ({type(err).__name__}: {err})") from None


def pil_to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """A PIL image of any mode as uint8 RGB ``(H, W, 3)`` (see the module docstring: 16-bit
    gray scaled, alpha dropped, palette and CMYK converted). No orientation is applied here.

    Raises:
      ValueError: PIL has no conversion of the image's mode to RGB.
    """
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.float64)
        gray = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in ("P", "PA", "RGBa"):
        # Palette transparency (or premultiplied colour) resolved by PIL; alpha dropped below.
        img = img.convert("RGBA")
    elif img.mode == "La":
        img = img.convert("LA")
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ValueError as err:
        raise ValueError(f"cannot convert a {img.mode!r} image to RGB ({err})") from None


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """One image file as uint8 RGB ``(H, W, 3)``, upright: the one image reader.

    EXIF orientation applied, grayscale repeated, 16-bit grayscale scaled, alpha dropped (not
    composited), palette and CMYK converted; see the module docstring.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not an image, corrupt or truncated, or a mode PIL cannot convert to RGB;
        the message names the file.
    """
    with decode_image(path) as img:
        try:
            return pil_to_rgb_uint8(img)
        except ValueError as err:
            raise ValueError(f"{Path(path)}: {err}") from None


def _as_uint8(arr: np.ndarray) -> np.ndarray:
    """uint8 as is; bool as 0 / 255; integers in [0, 255]; floats in [0, 1] scaled by 255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"integer images must hold values in [0, 255] (as uint8); got "
                             f"dtype {arr.dtype} values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise ValueError(
                f"images must be uint8 (0..255) or floats in [0, 1]; got dtype {arr.dtype} "
                f"values in [{np.nanmin(arr):g}, {np.nanmax(arr):g}] (for 0..255 floats pass "
                "np.clip(x, 0, 255).round().astype(np.uint8))"
            )
        return np.round(arr * 255.0).astype(np.uint8)
    raise ValueError(f"images must be uint8 (0..255); got dtype {arr.dtype}")


def to_rgb_uint8(image) -> np.ndarray:
    """One image, a PIL image or an array, as uint8 RGB ``(H, W, 3)``: the one array conversion.

    Args:
      image: a PIL image of any mode (its EXIF orientation applied, then converted as
        :func:`pil_to_rgb_uint8`), or an array ``(H, W)`` / ``(H, W, 1)`` grayscale (repeated),
        ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (alpha dropped, not composited), of dtype uint8,
        bool (0 / 255), an integer type with values in [0, 255], or float with values in
        [0, 1] (scaled by 255 and rounded; floats outside [0, 1] are an error, not a guess).

    Raises:
      ValueError: another shape, an empty image, or values outside the dtype's range.
    """
    if isinstance(image, Image.Image):
        return pil_to_rgb_uint8(ImageOps.exif_transpose(image))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"an image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"empty image of shape {arr.shape}")
    arr = _as_uint8(arr)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)
