"""On-device image augmentation: pure ``jax.numpy``, jit-compiled, vectorised over the batch.

Every function takes a batch ``images: (N, H, W, C)`` (uint8 or float) and returns the same
shape and dtype; randomness comes from an explicit ``jax.random`` key and each image draws its
own crop offset, flip and cutout square. No Python loop runs over images. The functions are
already wrapped in ``jax.jit`` (sizes and modes are static arguments) and can be called inside
another jit-compiled function (a train step) as well.

Typical use inside a train step::

    x = augment(rng, images_uint8, crop_pad=4, flip=True, cutout_size=0)
    x = normalize(x, CIFAR10_MEAN, CIFAR10_STD)        # float32 (N, H, W, C)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_PAD_MODES = ("reflect", "symmetric", "edge", "constant", "wrap")


def _check_batch(images, fn: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{fn} expects images of shape (N, H, W, C), got shape {images.shape}")


@partial(jax.jit, static_argnames=("dtype",))
def normalize(images, mean: Sequence[float] | jax.Array, std: Sequence[float] | jax.Array,
              dtype=jnp.float32) -> jax.Array:
    """Scale uint8 images to floats: ``(x / 255 - mean) / std``.

    Args:
      images: (N, H, W, C) uint8 (or float images already in [0, 255]).
      mean, std: (C,) per-channel statistics in [0, 1] units (e.g. ``CIFAR10_MEAN``), or scalars.
      dtype: output dtype (float32 by default; bfloat16 for mixed precision). The arithmetic runs
        in float32 and is cast at the end.

    Returns:
      (N, H, W, C) ``dtype``.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    if mean.ndim > 1 or std.ndim > 1 or (mean.ndim == 1 and mean.shape[0] != images.shape[-1]) or (
        std.ndim == 1 and std.shape[0] != images.shape[-1]
    ):
        raise ValueError(
            f"mean and std must be scalars or have one value per channel ({images.shape[-1]}), "
            f"got shapes {mean.shape} and {std.shape}"
        )
    # One multiply-add per element: x * (1 / (255 std)) - mean / std.
    scale = 1.0 / (255.0 * std)
    shift = mean / std
    return (images.astype(jnp.float32) * scale - shift).astype(dtype)


def crop_offsets(rng: jax.Array, n: int, pad: int) -> jax.Array:
    """(n, 2) int32 random (row, col) offsets, each in [0, 2 * pad], as used by random_crop."""
    return jax.random.randint(rng, (n, 2), 0, 2 * pad + 1, dtype=jnp.int32)


@partial(jax.jit, static_argnames=("pad", "mode"))
def crop_with_offsets(images, offsets, pad: int = 4, mode: str = "reflect") -> jax.Array:
    """Pad by ``pad`` pixels on every side, then cut back to (H, W) at the given offsets.

    Args:
      images: (N, H, W, C) uint8 or float.
      offsets: (N, 2) int (row, col) of each crop's top-left corner in the padded image, in
        [0, 2 * pad]; (pad, pad) gives back the original image.
      pad: padding in pixels (static).
      mode: ``jnp.pad`` mode: "reflect" (default, no repeated edge), "symmetric", "edge",
        "constant" (zeros) or "wrap".

    Returns:
      (N, H, W, C), same dtype as ``images``.
    """
    _check_batch(images, "crop_with_offsets")
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    n, h, w, c = images.shape
    if mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"reflect padding needs pad < image size, got pad={pad} for {h}x{w}")
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    offsets = jnp.asarray(offsets, jnp.int32)
    zero = jnp.zeros((), jnp.int32)

    def one(img, off):
        return lax.dynamic_slice(img, (off[0], off[1], zero), (h, w, c))

    return jax.vmap(one)(padded, offsets)


@partial(jax.jit, static_argnames=("pad", "mode"))
def random_crop(rng: jax.Array, images, pad: int = 4, mode: str = "reflect") -> jax.Array:
    """Random translation: pad by ``pad`` then crop (H, W) at a random offset per image.

    Args:
      rng: a ``jax.random`` key.
      images: (N, H, W, C) uint8 or float.
      pad: padding in pixels (static); offsets are uniform in [0, 2 * pad] per axis.
      mode: padding mode, "reflect" by default (see :func:`crop_with_offsets`).

    Returns:
      (N, H, W, C), same dtype as ``images``.
    """
    _check_batch(images, "random_crop")
    if pad == 0:
        return images
    return crop_with_offsets(images, crop_offsets(rng, images.shape[0], pad), pad=pad, mode=mode)


def flip_mask(rng: jax.Array, n: int) -> jax.Array:
    """(n,) bool: which images random_flip mirrors (each with probability 0.5)."""
    return jax.random.bernoulli(rng, 0.5, (n,))


@jax.jit
def random_flip(rng: jax.Array, images) -> jax.Array:
    """Mirror each image left-right (along W) with probability 0.5.

    Args:
      rng: a ``jax.random`` key.
      images: (N, H, W, C) uint8 or float.

    Returns:
      (N, H, W, C), same dtype; image i is mirrored where ``flip_mask(rng, N)[i]``.
    """
    _check_batch(images, "random_flip")
    mask = flip_mask(rng, images.shape[0])
    return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


def flip_rows(images, flips):
    """Mirror left-right (along W) the images whose ``flips`` entry is True (no randomness:
    the mask decides, e.g. :func:`~jaxcnn.data.alternating_flip_mask`).

    Args:
      images: (N, H, W, C) any dtype, numpy or jax.
      flips: (N,) bool.

    Returns:
      (N, H, W, C), same dtype: row i is ``images[i, :, ::-1]`` where ``flips[i]``; numpy in,
      numpy out (the host feed), otherwise a jax array (inside a step). Both give the same bits.
    """
    _check_batch(images, "flip_rows")
    if isinstance(images, np.ndarray) and isinstance(flips, np.ndarray):
        return np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def cutout_centres(rng: jax.Array, n: int, height: int, width: int) -> jax.Array:
    """(n, 2) int32 random (row, col) centres, uniform over the image, as used by cutout."""
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (n,), 0, height, dtype=jnp.int32)
    cx = jax.random.randint(kx, (n,), 0, width, dtype=jnp.int32)
    return jnp.stack([cy, cx], axis=1)


@partial(jax.jit, static_argnames=("size",))
def cutout_at(images, centres, size: int) -> jax.Array:
    """Zero a ``size x size`` square centred at ``centres[i]`` in image i, clipped at borders.

    The square covers rows ``[cy - size // 2, cy - size // 2 + size)`` (and the same for
    columns), intersected with the image.

    Args:
      images: (N, H, W, C) uint8 or float.
      centres: (N, 2) int (row, col).
      size: side of the square in pixels (static); 0 leaves the images unchanged.

    Returns:
      (N, H, W, C), same dtype.
    """
    _check_batch(images, "cutout_at")
    if size < 0:
        raise ValueError(f"cutout size must be >= 0, got {size}")
    if size == 0:
        return images
    _, h, w, _ = images.shape
    centres = jnp.asarray(centres, jnp.int32)
    top = centres[:, 0] - size // 2
    left = centres[:, 1] - size // 2
    rows = jnp.arange(h, dtype=jnp.int32)[None, :]
    cols = jnp.arange(w, dtype=jnp.int32)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (N, W)
    hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]  # (N, H, W, 1)
    return jnp.where(hole, jnp.zeros((), images.dtype), images)


@partial(jax.jit, static_argnames=("size",))
def cutout(rng: jax.Array, images, size: int) -> jax.Array:
    """Cutout (DeVries & Taylor 2017): zero a random ``size x size`` square per image.

    Args:
      rng: a ``jax.random`` key.
      images: (N, H, W, C) uint8 or float.
      size: side of the square (static); the centre is uniform over the image, so squares near
        a border are clipped. 0 leaves the images unchanged.

    Returns:
      (N, H, W, C), same dtype.
    """
    _check_batch(images, "cutout")
    if size == 0:
        return images
    n, h, w, _ = images.shape
    return cutout_at(images, cutout_centres(rng, n, h, w), size=size)


@partial(jax.jit, static_argnames=("crop_pad", "flip", "cutout_size", "pad_mode"))
def augment(rng: jax.Array, images, *, crop_pad: int = 4, flip: bool = True,
            cutout_size: int = 0, pad_mode: str = "reflect") -> jax.Array:
    """The standard CIFAR augmentation: random crop after padding, horizontal flip, cutout.

    Args:
      rng: a ``jax.random`` key; split into one key per step.
      images: (N, H, W, C) uint8 or float.
      crop_pad: padding for :func:`random_crop` (0 disables the crop).
      flip: apply :func:`random_flip` (mirroring by a fixed mask instead: :func:`flip_rows`).
      cutout_size: side of the :func:`cutout` square (0 disables it).
      pad_mode: padding mode of the crop.

    Returns:
      (N, H, W, C), same dtype as ``images``.
    """
    _check_batch(images, "augment")
    k_crop, k_flip, k_cut = jax.random.split(rng, 3)
    if crop_pad:
        images = random_crop(k_crop, images, pad=crop_pad, mode=pad_mode)
    if flip:
        images = random_flip(k_flip, images)
    if cutout_size:
        images = cutout(k_cut, images, size=cutout_size)
    return images
