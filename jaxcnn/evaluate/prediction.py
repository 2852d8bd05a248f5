"""Batched prediction: normalise uint8 images on the device and run a model in fixed-shape
batches, so its forward pass compiles once.

It runs on JAX's default device whatever the number of devices (no mesh, so any batch size
works on 1, 2, 4 or 8 devices); data-parallel evaluation over every device is
``jaxcnn.train.evaluate_dataset``.

Normalisation (the same as training): ``x = (images / 255 - mean) / std`` per channel, with
``mean`` and ``std`` on the [0, 1] scale, e.g. CIFAR-10's ``(0.4914, 0.4822, 0.4465)``.
Optional test-time augmentation (``tta="flip"`` / ``"flip_translate"``, see
:mod:`jaxcnn.evaluate.tta`) averages the logits of mirrored/shifted views inside the same jitted
forward, after normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.evaluate.tta import TTA_MODES, check_tta_mode, tta_logits, tta_views

__all__ = [
    "TTA_MODES",  # re-exported: test-time augmentation is part of batched prediction
    "check_tta_mode",
    "make_forward",
    "normalize_on_device",
    "predict_logits",
    "run_batched",
    "softmax",
    "tta_logits",
    "tta_views",
]


def as_stats(value, name: str) -> tuple[float, ...]:
    """``mean``/``std`` as a tuple of floats (a scalar becomes a 1-tuple)."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite number or sequence of numbers, got {value!r}")
    if name == "std" and np.any(arr <= 0):
        raise ValueError(f"std must be positive, got {value!r}")
    return tuple(float(v) for v in arr)


def _stats_arrays(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``mean`` and ``std`` as float32 arrays; one value for all channels becomes a
    scalar, which broadcasts over any channel count."""
    arrays = []
    for value, name in ((mean, "mean"), (std, "std")):
        stats = as_stats(value, name)
        arrays.append(np.asarray(stats[0] if len(stats) == 1 else stats, np.float32))
    return arrays[0], arrays[1]


def normalize_on_device(images, mean, std, dtype=jnp.float32):
    """``(images / 255 - mean) / std`` in ``dtype``; jit-friendly.

    Args:
      images: uint8 (or integer/float on the 0-255 scale) ``(..., C)``.
      mean, std: per-channel statistics on the [0, 1] scale, shape ``(C,)`` or scalars.

    Returns:
      ``(..., C)`` array of ``dtype``.
    """
    from jaxcnn.data.augment import normalize  # the training pipeline's own normalisation

    return normalize(jnp.asarray(images), mean, std, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _cached_forward(apply_fn, mean: tuple, std: tuple, tta: str):
    return build_forward(apply_fn, mean, std, tta)


def build_forward(apply_fn, mean: tuple, std: tuple, tta: str = "none"):
    mean_arr, std_arr = _stats_arrays(mean, std)
    check_tta_mode(tta)

    @jax.jit
    def forward(variables, images):
        x = normalize_on_device(images, mean_arr, std_arr)

        def logits_fn(v):
            return jnp.asarray(apply_fn(variables, v, train=False), jnp.float32)

        return tta_logits(logits_fn, x, tta)

    return forward


def make_forward(apply_fn: Callable, mean, std, tta: str = "none") -> Callable:
    """A jitted ``forward(variables, images_uint8 (B, H, W, C)) -> logits float32 (B, K)``.

    ``apply_fn`` is called as ``apply_fn(variables, x, train=False)`` with the normalised float32
    ``x`` (``model.apply`` of every jaxcnn model fits); with ``tta`` other than ``"none"`` once
    per view of :func:`jaxcnn.evaluate.tta_logits`, whose averaged logits are returned. Forwards
    are cached per ``(apply_fn, mean, std, tta)`` when ``apply_fn`` is hashable, so repeated
    calls reuse one compile.
    """
    mean_t, std_t = as_stats(mean, "mean"), as_stats(std, "std")
    check_tta_mode(tta)
    if not callable(apply_fn):
        raise ValueError(f"apply_fn must be callable (e.g. model.apply), got {apply_fn!r}")
    try:
        return _cached_forward(apply_fn, mean_t, std_t, tta)
    except TypeError:  # unhashable apply_fn: no cache
        return build_forward(apply_fn, mean_t, std_t, tta)


def run_batched(forward: Callable, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``forward(variables, batch)`` over ``images`` in fixed-size batches.

    Every call of ``forward`` sees the shape ``(B, H, W, C)``: the last batch is padded with
    zeros and the padded rows are dropped from the result, so ``forward`` compiles once per
    ``B``. ``B`` is ``batch_size``, or for a set smaller than that the next power of two at or
    above ``N`` (a few images are not padded up to a large batch; calls with varying small
    ``N`` compile at most ``log2(batch_size)`` shapes).

    Args:
      forward: ``(variables, (B, H, W, C)) -> (B, K)``.
      images: ``(N, H, W, C)`` host array.
      batch_size: the largest batch (positive int).

    Returns:
      ``(N, K)`` float32 numpy array.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images is empty (N == 0); pass at least one image")
    batch_size = min(batch_size, 1 << (n - 1).bit_length())
    outputs = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        m = batch.shape[0]
        if m < batch_size:
            pad = np.zeros((batch_size - m, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        outputs.append((forward(variables, batch), m))  # dispatch asynchronously
    return np.concatenate([np.asarray(out)[:m] for out, m in outputs], axis=0).astype(np.float32)


def predict_logits(
    apply_fn: Callable,
    variables,
    images_uint8,
    *,
    mean,
    std,
    batch_size: int = 256,
    tta: str = "none",
) -> np.ndarray:
    """Logits of a model on uint8 images, normalised on device, in fixed-shape batches.

    Args:
      apply_fn: ``apply_fn(variables, x, train=False) -> (B, K)``, e.g. ``model.apply``.
      variables: the model's variables (``{"params": ..., "batch_stats": ...}``; from a
        ``TrainState``: ``state.variables``).
      images_uint8: uint8 ``(N, H, W, C)``.
      mean, std: per-channel normalisation on the [0, 1] scale, ``(C,)``.
      batch_size: fixed batch size; the last batch is padded so the forward compiles once.
      tta: test-time augmentation, one of ``jaxcnn.evaluate.TTA_MODES``: ``"none"`` (one
        pass), ``"flip"`` (2 views) or ``"flip_translate"`` (6 views); the logits are averaged
        (:func:`jaxcnn.evaluate.tta_logits`), each view one batched pass.

    Returns:
      float32 numpy ``(N, K)``.
    """
    check_tta_mode(tta)
    images = np.asarray(images_uint8)
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (N, H, W, C), got {images.shape}; "
            "add a batch axis with images[None] for a single image"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (0-255), got dtype {images.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    mean_t, std_t = as_stats(mean, "mean"), as_stats(std, "std")
    channels = images.shape[-1]
    for name, stats in (("mean", mean_t), ("std", std_t)):
        if len(stats) not in (1, channels):
            raise ValueError(
                f"{name} has {len(stats)} values but images have {channels} channels; "
                f"pass one value per channel"
            )
    forward = make_forward(apply_fn, mean_t, std_t, tta)
    return run_batched(forward, variables, images, batch_size)


def softmax(logits, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``logits`` ``(N, K)`` as float32 numpy."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
