"""jaxcnn.evaluate.tta against a float64 numpy re-computation with explicit pixel indices, and
TTA inside the batched prediction."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import evaluate as ev

N, H, W, C, K = 5, 6, 7, 3, 4


@pytest.fixture
def linear():
    """A linear logits_fn ``x -> flatten(x) @ w`` (float32) and its float64 twin."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(H * W * C, K))
    x = rng.normal(size=(N, H, W, C))

    def fn(v):
        return v.reshape(v.shape[0], -1) @ jnp.asarray(w, jnp.float32)

    def fn64(v):
        return v.reshape(v.shape[0], -1) @ w

    return fn, fn64, x


def _reflect(i, n):
    """Index ``i`` in [-1, n] reflected into [0, n) without repeating the edge (-1 -> 1)."""
    return np.where(i < 0, -i, np.where(i >= n, 2 * (n - 1) - i, i))


def _shift(x, d):
    """``out[:, i, j] = x[:, reflect(i + d), reflect(j + d)]``: the one-pixel diagonal crops."""
    rows = _reflect(np.arange(H) + d, H)
    cols = _reflect(np.arange(W) + d, W)
    return x[:, rows][:, :, cols]


def _reference(fn64, x, mode):
    def mirror(v):
        return v[:, :, np.arange(W)[::-1]]

    def flip(v):
        return 0.5 * fn64(v) + 0.5 * fn64(mirror(v))

    if mode == "none":
        return fn64(x)
    if mode == "flip":
        return flip(x)
    return 0.5 * flip(x) + 0.25 * flip(_shift(x, -1)) + 0.25 * flip(_shift(x, +1))


@pytest.mark.parametrize("mode", ev.TTA_MODES)
def test_matches_float64_reference(linear, mode):
    fn, fn64, x = linear
    got = np.asarray(ev.tta_logits(fn, jnp.asarray(x, jnp.float32), mode))
    want = _reference(fn64, x, mode)
    assert got.shape == (N, K) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    weights = [w for w, _ in ev.tta_views(jnp.asarray(x), mode)]
    assert len(weights) == {"none": 1, "flip": 2, "flip_translate": 6}[mode]
    assert sum(weights) == pytest.approx(1.0)


def test_translations_are_the_reflect_pad_crops(linear):
    """t_a = pad(x)[:, 0:H, 0:W] and t_b = pad(x)[:, 2:, 2:], checked on single pixels."""
    _, _, x = linear
    views = [np.asarray(v) for _, v in ev.tta_views(jnp.asarray(x), "flip_translate")]
    t_a, t_b = views[2], views[4]
    np.testing.assert_allclose(t_a[:, 1:, 1:], x[:, :-1, :-1], rtol=1e-6)  # moved down-right
    np.testing.assert_allclose(t_a[:, 0, 0], x[:, 1, 1], rtol=1e-6)  # reflected corner
    np.testing.assert_allclose(t_b[:, :-1, :-1], x[:, 1:, 1:], rtol=1e-6)
    np.testing.assert_allclose(t_b[:, H - 1, W - 1], x[:, H - 2, W - 2], rtol=1e-6)
    np.testing.assert_allclose(views[3], t_a[:, :, ::-1], rtol=1e-6)


def test_flip_of_a_mirror_symmetric_function_is_the_function():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(N, H, W, C)), jnp.float32)

    def symmetric(v):  # per-row sums over W and per-channel means: blind to a mirror
        return jnp.concatenate([v.sum(axis=(2, 3)), v.mean(axis=(1, 2))], axis=-1)

    np.testing.assert_allclose(ev.tta_logits(symmetric, x, "flip"), symmetric(x),
                               rtol=1e-6, atol=1e-6)


def test_flip_translate_is_jittable(linear):
    fn, _, x = linear
    x = jnp.asarray(x, jnp.float32)
    jitted = jax.jit(lambda v: ev.tta_logits(fn, v, "flip_translate"))
    np.testing.assert_allclose(jitted(x), ev.tta_logits(fn, x, "flip_translate"),
                               rtol=1e-6, atol=1e-6)


def test_bad_mode_and_tiny_images_are_value_errors(linear):
    fn, _, x = linear
    with pytest.raises(ValueError, match=r"unknown TTA mode 'mirror'.*'none', 'flip', "
                                         r"'flip_translate'"):
        ev.tta_logits(fn, jnp.asarray(x), "mirror")
    with pytest.raises(ValueError, match="unknown TTA mode"):
        ev.check_tta_mode(None)
    with pytest.raises(ValueError, match="at least 2x2"):
        ev.tta_logits(lambda v: v.sum(axis=(1, 2)), jnp.zeros((1, 1, 4, 3)), "flip_translate")


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        return nn.Dense(3)(nn.relu(x).reshape(x.shape[0], -1))


def test_predict_logits_applies_tta_after_normalising():
    model = Tiny()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    images = np.random.default_rng(2).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    x = jnp.asarray((images / 255.0 - np.array(mean)) / np.array(std), jnp.float32)
    plain = ev.predict_logits(model.apply, variables, images, mean=mean, std=std, batch_size=3)
    for mode in ev.TTA_MODES:
        got = ev.predict_logits(model.apply, variables, images, mean=mean, std=std,
                                batch_size=3, tta=mode)
        want = ev.tta_logits(lambda v: model.apply(variables, v), x, mode)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, plain, atol=1e-4)  # TTA changes a non-symmetric net's logits
    with pytest.raises(ValueError, match="unknown TTA mode"):
        ev.predict_logits(model.apply, variables, images, mean=mean, std=std, tta="flips")
