"""Preprocessing, batched inference and the on-disk cache of backbone features and activations.

The backbone runs once over the data in inference mode (``train=False``: BatchNorm normalises
with its running statistics, dropout is off) through :func:`jaxcnn.evaluate.run_batched` (fixed
batch shape, one compilation). The output is cached as ``<cache_dir>/<name>-<hash>.npz``, the
hash covering the model definition, the variables the output depends on, the preprocessing
and the images, so any change to one of them computes it again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn import evaluate


def image_preprocess(
    input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(N, h, w, 3)`` -> float32 ``(N, H, W, 3)``: resize, then ``(x / 255 - mean) / std``.

    The resize is :func:`jaxcnn.data.resize_images` (PIL bilinear), exactly what
    :class:`jaxcnn.export.Bundle` does, so a head trained on these features gives the same
    predictions once exported. The returned function has ``.input_size``, ``.mean``, ``.std``
    and ``.key`` (its identity in cache keys).
    """
    from jaxcnn.data import resize_images

    size = (int(input_size[0]), int(input_size[1]))
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)

    def prep(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 (N, H, W, C) images, got {images.dtype} "
                             f"{images.shape}")
        if images.shape[1:3] != size:
            images = resize_images(images, size)
        return (images.astype(np.float32) / np.float32(255.0) - m) / s

    prep.input_size = size
    prep.mean = tuple(float(v) for v in m)
    prep.std = tuple(float(v) for v in s)
    prep.key = f"resize{size}-mean{prep.mean}-std{prep.std}"
    return prep


def backbone_preprocess(
    name: str, input_size: tuple[int, int]
) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`image_preprocess` with the normalisation of the pretrained network ``name``
    (``jaxcnn.pretrained.PRETRAINED[name].preprocessing``), at ``input_size``."""
    from jaxcnn.pretrained import PRETRAINED

    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained network {name!r}; available: {sorted(PRETRAINED)}")
    spec = PRETRAINED[name].preprocessing
    if spec.pixel_scale != 255.0 or spec.channel_order != "RGB":
        raise ValueError(f"{name}'s preprocessing ({spec.channel_order}, pixels / "
                         f"{spec.pixel_scale}) is not a per-channel mean/std on [0, 1] RGB; "
                         "use jaxcnn.pretrained.preprocess for it")
    return image_preprocess(input_size, spec.mean, spec.std)


def _hash_tree(h, tree) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")
    for k in sorted(flat):
        a = np.ascontiguousarray(np.asarray(flat[k]))
        h.update(k.encode())
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())


def features_cache_key(model, variables, images: np.ndarray, preprocess_key: str) -> str:
    """A 20-hex-digit hash of (model definition, variables, preprocessing, images)."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    _hash_tree(h, variables)
    h.update(preprocess_key.encode())
    h.update(str((images.shape, images.dtype.str)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:20]


def _check_images(images_uint8, batch_size) -> np.ndarray:
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or len(images_uint8) == 0:
        raise ValueError(f"images_uint8 must be non-empty uint8 (N, H, W, C), got "
                         f"{images_uint8.dtype} {images_uint8.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return images_uint8


def run_on_images(forward, variables, images_uint8, preprocess_fn, batch_size: int, *,
                  desc: str | None = None, progress: bool = False) -> np.ndarray:
    """``forward(variables, preprocess_fn(batch))`` over uint8 images with
    :func:`jaxcnn.evaluate.run_batched` (fixed batch shape: ``forward`` compiles once),
    float32; the preprocessing runs on the host per batch; a tqdm bar with images/s."""
    images_uint8 = _check_images(images_uint8, batch_size)
    bar, start = None, time.perf_counter()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images_uint8), desc=desc, unit="img", leave=False)

    def prep_forward(v, batch):
        out = forward(v, preprocess_fn(batch))
        if bar is not None:  # the bar shows finished batches (padding rows not counted)
            jax.block_until_ready(out)
            bar.update(min(len(batch), bar.total - bar.n))
            bar.set_postfix(img_s=f"{bar.n / (time.perf_counter() - start):.1f}")
        return out

    try:
        return evaluate.run_batched(prep_forward, variables, images_uint8, batch_size)
    finally:
        if bar is not None:
            bar.close()


def _cached_forward(forward, model, variables, key_variables, images_uint8, preprocess_fn,
                    batch_size, *, cache_dir, name, key_suffix, progress) -> np.ndarray:
    """``forward(variables, x)`` over all images, cached as ``<cache_dir>/<name>-<hash>.npz``
    (key: :func:`features_cache_key` of ``key_variables`` and the preprocessing + suffix)."""
    images_uint8 = _check_images(images_uint8, batch_size)
    path = None
    if cache_dir is not None:
        key = features_cache_key(model, key_variables, images_uint8,
                                 getattr(preprocess_fn, "key", repr(preprocess_fn)) + key_suffix)
        path = Path(cache_dir) / f"{name}-{key}.npz"
        if path.is_file():
            with np.load(path) as data:
                return data["features"]
    out = run_on_images(jax.jit(forward), variables, images_uint8, preprocess_fn, batch_size,
                        desc=f"extracting {name}", progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, features=out)
        os.replace(tmp, path)
    return out


def extract_features(
    model: nn.Module,
    variables,
    images_uint8: np.ndarray,
    preprocess_fn: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
    *,
    cache_dir: str | os.PathLike | None = None,
    name: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Pooled backbone features of every image, in inference mode, cached on disk.

    Args:
      model: a registry model with ``return_features`` (e.g. ``efficientnet_lite0``).
      variables: its ``params`` (+ ``batch_stats``); only the backbone part is used.
      images_uint8: ``(N, h, w, C)`` uint8.
      preprocess_fn: host function uint8 batch -> float32 model input (e.g.
        :func:`image_preprocess`); its ``key`` attribute (or its ``repr``) enters the cache key.
      batch_size: images per forward pass (the last batch is padded: one compilation).
      cache_dir: folder for ``<name>-<hash>.npz``; None disables caching.
      name: file name prefix of the cache.
      progress: tqdm bar with images/s.

    Returns:
      ``(N, D)`` float32 features (``D = 1280`` for EfficientNet-Lite0).
    """

    def forward(v, x):
        return model.apply(v, x, train=False, return_features=True).astype(jnp.float32)

    return _cached_forward(forward, model, variables, variables, images_uint8, preprocess_fn,
                           batch_size, cache_dir=cache_dir, name=name, key_suffix="",
                           progress=progress)


def _bottom_variables(model, variables, upto: int) -> dict:
    """The collections of ``variables`` restricted to modules ``0 .. upto - 1``."""
    below = set(model.module_names()[:upto])
    return {col: {k: v for k, v in tree.items() if k in below} for col, tree in variables.items()}


def extract_activations(
    model: nn.Module,
    variables,
    images_uint8: np.ndarray,
    preprocess_fn: Callable[[np.ndarray], np.ndarray],
    upto: int,
    batch_size: int = 64,
    *,
    flip: bool = False,
    cache_dir: str | os.PathLike | None = None,
    name: str = "activations",
    progress: bool = True,
) -> np.ndarray:
    """The activations entering module ``upto`` (inference mode), cached on disk.

    ``model.apply(variables, preprocess_fn(images), train=False, method=model.stem_and_blocks,
    upto=upto)`` in batches, stored float32 (exact: feeding them to ``model.from_block`` gives
    the logits of the full network). ``flip=True`` takes the horizontally mirrored images.
    The cache file ``<cache_dir>/<name>-<hash>.npz`` is keyed like :func:`extract_features`,
    by the variables of the modules below ``upto`` only (a new head or new top blocks reuse it),
    the preprocessing, ``upto``, ``flip`` and the images.

    Returns:
      ``(N, h, w, c)`` float32 (``(N, 5, 5, 192)`` entering ``block14`` of Lite0 at 160 px).
    """

    def forward(v, x):
        h = model.apply(v, x, train=False, method=model.stem_and_blocks, upto=upto)
        return h.astype(jnp.float32)

    prep = preprocess_fn
    if flip:
        def prep(images):
            return preprocess_fn(np.asarray(images)[:, :, ::-1])

        prep.key = getattr(preprocess_fn, "key", repr(preprocess_fn))
    return _cached_forward(forward, model, variables, _bottom_variables(model, variables, upto),
                           images_uint8, prep, batch_size, cache_dir=cache_dir,
                           name=name, key_suffix=f"-upto{upto}-flip{bool(flip)}",
                           progress=progress)


def predict_logits(model, variables, images_uint8, preprocess_fn, batch_size: int = 64):
    """(N, K) float32 logits of the full network in inference mode."""
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False).astype(jnp.float32))
    return run_on_images(forward, variables, images_uint8, preprocess_fn, batch_size)
