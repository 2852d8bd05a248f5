"""On-device augmentation: checked on known images against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    augment,
    cutout,
    normalize,
    random_crop,
    random_flip,
)
from jaxcnn.data.augment import crop_offsets, crop_with_offsets, cutout_at, flip_mask


def known_images(n=16, h=12, w=10, c=3):
    """Every pixel distinct (mod 256) and never zero, so flips, crops and holes are visible."""
    x = np.arange(n * h * w * c).reshape(n, h, w, c) % 251 + 1
    return x.astype(np.uint8)


def test_flip_mirrors_exactly_the_selected_images():
    x = known_images(64)
    key = jax.random.key(3)
    y = np.asarray(random_flip(key, jnp.asarray(x)))
    mask = np.asarray(flip_mask(key, len(x)))
    mirrored = x[:, :, ::-1, :]
    for i in range(len(x)):
        np.testing.assert_array_equal(y[i], mirrored[i] if mask[i] else x[i])
    # Independent of the helper: each output is the original or its mirror, and both occur.
    is_orig = (y == x).all(axis=(1, 2, 3))
    is_mirror = (y == mirrored).all(axis=(1, 2, 3))
    assert (is_orig ^ is_mirror).all()
    assert 10 < is_mirror.sum() < 54


def numpy_crop(x, offsets, pad, mode="reflect"):
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    h, w = x.shape[1:3]
    return np.stack([p[r : r + h, c : c + w] for p, (r, c) in zip(padded, offsets, strict=True)])


@pytest.mark.parametrize("mode", ["reflect", "constant", "edge"])
def test_crop_with_offsets_matches_numpy_pad_and_slice(mode):
    x = known_images(9)
    offsets = np.array([[r, c] for r in (0, 4, 8) for c in (0, 3, 8)])
    y = np.asarray(crop_with_offsets(jnp.asarray(x), jnp.asarray(offsets), pad=4, mode=mode))
    np.testing.assert_array_equal(y, numpy_crop(x, offsets, 4, mode))
    # (pad, pad) is the identity.
    same = crop_with_offsets(jnp.asarray(x), jnp.full((9, 2), 4), pad=4, mode=mode)
    np.testing.assert_array_equal(np.asarray(same), x)


def test_random_crop_uses_offsets_in_range_and_matches_reference():
    x = known_images(200, 8, 8, 1)
    key = jax.random.key(0)
    offsets = np.asarray(crop_offsets(key, len(x), 4))
    assert offsets.min() == 0 and offsets.max() == 8  # full range [0, 2 * pad] is drawn
    y = np.asarray(random_crop(key, jnp.asarray(x), pad=4))
    np.testing.assert_array_equal(y, numpy_crop(x, offsets, 4))
    # Recover each offset by matching against all 81 candidates: exactly one fits.
    for i in range(0, 200, 40):
        fits = [
            (r, c) for r in range(9) for c in range(9)
            if (numpy_crop(x[i : i + 1], [(r, c)], 4)[0] == y[i]).all()
        ]
        assert fits == [tuple(offsets[i])]


def test_cutout_zeroes_a_clipped_square():
    x = known_images(5, 16, 16, 2)
    centres = np.array([[8, 8], [0, 0], [15, 15], [0, 9], [7, 15]])
    size = 6
    y = np.asarray(cutout_at(jnp.asarray(x), jnp.asarray(centres), size=size))
    for i, (cy, cx) in enumerate(centres):
        top, left = cy - size // 2, cx - size // 2
        expect = np.zeros((16, 16), bool)
        expect[max(top, 0) : top + size, max(left, 0) : left + size] = True
        holes = (y[i] == 0).all(axis=-1)
        np.testing.assert_array_equal(holes, expect)
        np.testing.assert_array_equal(y[i][~expect], x[i][~expect])
    assert (y[0] == 0).all(axis=-1).sum() == size * size  # interior: the full square
    assert (y[1] == 0).all(axis=-1).sum() == 3 * 3  # corner: clipped


def test_random_cutout_on_float_images_zeroes_at_most_a_square():
    x = jnp.asarray(known_images(32, 16, 16, 3), jnp.float32)
    y = np.asarray(cutout(jax.random.key(1), x, size=4))
    assert y.dtype == np.float32
    holes = (y == 0).all(axis=-1).sum(axis=(1, 2))
    assert holes.max() == 16 and holes.min() >= 4  # clipped squares keep at least 2x2


def test_normalize_matches_numpy_float64():
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    y = np.asarray(normalize(jnp.asarray(x), CIFAR10_MEAN, CIFAR10_STD))
    ref = (x.astype(np.float64) / 255.0 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)
    full = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_allclose(np.asarray(normalize(full, 0.5, 0.25)),
                               (full / 255.0 - 0.5) / 0.25, rtol=0, atol=1e-6)
    assert normalize(jnp.asarray(x), CIFAR10_MEAN, CIFAR10_STD, dtype=jnp.bfloat16).dtype == (
        jnp.bfloat16
    )
    with pytest.raises(ValueError, match="one value per channel"):
        normalize(jnp.asarray(x), (0.5, 0.5), (0.2, 0.2))


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_augment_keeps_shape_dtype_is_deterministic_and_jits(dtype):
    x = jnp.asarray(known_images(8, 16, 16, 3), dtype)
    k1, k2 = jax.random.key(0), jax.random.key(1)
    y1 = augment(k1, x, crop_pad=4, flip=True, cutout_size=4)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(augment(k1, x, cutout_size=4)))
    assert not np.array_equal(np.asarray(y1), np.asarray(augment(k2, x, cutout_size=4)))
    jitted = jax.jit(lambda k, im: augment(k, im, cutout_size=4))
    np.testing.assert_array_equal(np.asarray(jitted(k1, x)), np.asarray(y1))
    # All off: identity.
    same = augment(k1, x, crop_pad=0, flip=False, cutout_size=0)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        random_flip(jax.random.key(0), jnp.zeros((4, 4, 3), jnp.uint8))
    with pytest.raises(ValueError, match="mode must be one of"):
        random_crop(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8), mode="mirror")
