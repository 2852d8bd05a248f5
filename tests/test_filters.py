"""Classic filters do what their names say on synthetic images."""

import numpy as np
import pytest
import scipy.ndimage

from jaxcnn import ops
from jaxcnn.ops import filters


def apply(image, k2d, padding="VALID"):
    """image: (H, W) -> (H', W') filtered with conv (cross-correlation)."""
    return np.asarray(
        ops.conv(image[None, :, :, None].astype(np.float32), ops.as_kernel(k2d), padding=padding)
    )[0, :, :, 0]


def step_image(axis):
    """8x8, dark (0) then bright (1) from the middle on, along columns (axis=1) or rows (0)."""
    img = np.zeros((8, 8), np.float32)
    if axis == 1:
        img[:, 4:] = 1
    else:
        img[4:, :] = 1
    return img


def test_all_filters_are_readonly_float32_3x3_and_listed():
    names = [n for n in filters.__all__ if n.isupper() and n != "CLASSIC_FILTERS"]
    assert len(names) >= 14
    listed = {id(v) for v in ops.CLASSIC_FILTERS.values()}
    for name in names:
        k = getattr(ops, name)
        assert k.shape == (3, 3) and k.dtype == np.float32, name
        assert id(k) in listed, name
        with pytest.raises(ValueError):
            k[0, 0] = 5  # module constants are read-only
    assert ops.CLASSIC_FILTERS["sobel_x"] is ops.SOBEL_X


def test_edge_kernel_relations():
    np.testing.assert_array_equal(ops.VERTICAL_EDGE, [[1, 0, -1], [2, 0, -2], [1, 0, -1]])
    np.testing.assert_array_equal(ops.VERTICAL_EDGE, -ops.SOBEL_X)
    np.testing.assert_array_equal(ops.HORIZONTAL_EDGE, ops.VERTICAL_EDGE.T)
    np.testing.assert_array_equal(ops.SOBEL_Y, ops.SOBEL_X.T)
    np.testing.assert_array_equal(ops.PREWITT_Y, ops.PREWITT_X.T)
    np.testing.assert_array_equal(ops.OUTLINE, -ops.LAPLACIAN_8)  # same stencil, opposite sign


def test_sobel_x_responds_only_at_a_vertical_edge():
    y = apply(step_image(axis=1), ops.SOBEL_X)  # (6, 6); window columns j..j+2
    # the windows starting at columns 2 and 3 straddle the edge between columns 3 and 4
    expected = np.zeros((6, 6), np.float32)
    expected[:, 2:4] = 4  # (1 + 2 + 1) * (bright - dark), positive: brighter to the right
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(apply(step_image(axis=1), ops.VERTICAL_EDGE), -expected)
    np.testing.assert_array_equal(apply(step_image(axis=1), ops.PREWITT_X), expected * 3 / 4)
    # and not at all to a horizontal edge
    np.testing.assert_array_equal(apply(step_image(axis=0), ops.SOBEL_X), 0)


def test_sobel_y_responds_only_at_a_horizontal_edge():
    y = apply(step_image(axis=0), ops.SOBEL_Y)
    expected = np.zeros((6, 6), np.float32)
    expected[2:4, :] = 4  # brighter downwards
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(apply(step_image(axis=0), ops.HORIZONTAL_EDGE), -expected)
    np.testing.assert_array_equal(apply(step_image(axis=1), ops.SOBEL_Y), 0)


def test_sobel_matches_scipy():
    img = np.random.default_rng(0).normal(size=(9, 10)).astype(np.float32)
    # scipy.ndimage.sobel(axis=1) is the x derivative (mirror-padded); compare interiors
    np.testing.assert_allclose(
        apply(img, ops.SOBEL_X), scipy.ndimage.sobel(img, axis=1)[1:-1, 1:-1], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        apply(img, ops.SOBEL_Y), scipy.ndimage.sobel(img, axis=0)[1:-1, 1:-1], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        apply(img, ops.LAPLACIAN, "SAME"),
        scipy.ndimage.correlate(img, ops.LAPLACIAN, mode="constant"),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("name", ["box_blur", "gaussian_blur", "sharpen", "identity"])
def test_mean_preserving_filters_keep_a_constant_image(name):
    k = ops.CLASSIC_FILTERS[name]
    assert np.isclose(k.sum(), 1.0)
    const = np.full((6, 7), 3.5, np.float32)
    np.testing.assert_allclose(apply(const, k), np.full((4, 5), 3.5), rtol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "laplacian",
        "laplacian_8",
        "outline",
        "sobel_x",
        "sobel_y",
        "prewitt_x",
        "prewitt_y",
        "vertical_edge",
        "horizontal_edge",
    ],
)
def test_derivative_filters_ignore_a_constant_image(name):
    k = ops.CLASSIC_FILTERS[name]
    assert k.sum() == 0
    np.testing.assert_allclose(apply(np.full((6, 6), 7.0, np.float32), k), 0, atol=1e-6)


def test_laplacian_is_zero_on_a_ramp_and_finds_a_spot():
    ramp = np.add.outer(np.arange(7.0), 2 * np.arange(7.0)).astype(np.float32)
    np.testing.assert_allclose(apply(ramp, ops.LAPLACIAN), 0, atol=1e-5)
    np.testing.assert_allclose(apply(ramp, ops.LAPLACIAN_8), 0, atol=1e-5)
    spot = np.zeros((7, 7), np.float32)
    spot[3, 3] = 1
    y = apply(spot, ops.LAPLACIAN, "SAME")
    assert y[3, 3] == -4 and y.sum() == 0 and np.count_nonzero(y) == 5


def test_blur_smooths_noise_and_sharpen_amplifies_it():
    noise = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)
    assert apply(noise, ops.BOX_BLUR).std() < 0.5 * noise.std()
    assert apply(noise, ops.GAUSSIAN_BLUR).std() < 0.7 * noise.std()
    assert apply(noise, ops.SHARPEN).std() > 2 * noise.std()
    np.testing.assert_array_equal(apply(noise, ops.IDENTITY), noise[1:-1, 1:-1])


def test_emboss_is_identity_plus_an_antisymmetric_gradient():
    off = ops.EMBOSS - ops.IDENTITY  # a diagonal derivative: flips sign under a 180 degree turn
    np.testing.assert_array_equal(off[::-1, ::-1], -off)
    assert ops.EMBOSS.sum() == 1


def test_as_kernel_shapes_and_depthwise_use():
    assert ops.as_kernel(ops.SOBEL_X).shape == (3, 3, 1, 1)
    assert ops.as_kernel(ops.SOBEL_X, channels=3).shape == (3, 3, 3, 1)
    assert ops.as_kernel(ops.SOBEL_X, 3, depthwise=True).shape == (3, 3, 1, 3)
    assert ops.as_kernel(ops.SOBEL_X).dtype == np.float32
    rgb = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    summed = ops.conv(rgb, ops.as_kernel(ops.SOBEL_X, 3))
    np.testing.assert_allclose(
        summed,
        ops.conv(rgb.sum(-1, keepdims=True), ops.as_kernel(ops.SOBEL_X)),
        rtol=1e-5,
        atol=1e-5,
    )
    per_channel = ops.conv(rgb, ops.as_kernel(ops.SOBEL_X, 3, depthwise=True), groups=3)
    for c in range(3):
        np.testing.assert_allclose(
            per_channel[..., c : c + 1],
            ops.conv(rgb[..., c : c + 1], ops.as_kernel(ops.SOBEL_X)),
            rtol=1e-5,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match=r"k2d must be a 2D filter of shape \(kh, kw\)"):
        ops.as_kernel(np.zeros((3, 3, 1)))
    with pytest.raises(ValueError, match=r"channels must be a positive int"):
        ops.as_kernel(ops.SOBEL_X, 0)
