"""jaxcnn.data.images: the one image reader (EXIF, 16-bit, palette, alpha, CMYK, truncation)
and the one array conversion, and that image folders, bundles and preprocessing use them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ExifTags, Image

from jaxcnn import export
from jaxcnn.data import load_image_folder
from jaxcnn.data.images import decode_image, read_image_rgb, to_rgb_uint8
from jaxcnn.pretrained.preprocess import to_rgb_uint8 as preprocess_to_rgb


def _smooth(h, w):
    """A smooth RGB image (JPEG keeps it within a few levels)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)],
                    axis=-1).astype(np.uint8)


def test_exif_orientation_6_is_applied(tmp_path):
    stored = _smooth(24, 40)  # stored landscape; tag 6 = "rotate 90 degrees clockwise to view"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with Image.open(path) as raw:
        assert raw.getexif()[ExifTags.Base.Orientation] == 6 and raw.size == (40, 24)
        plain = np.asarray(raw.convert("RGB"))  # what PIL gives without the tag applied
    got = read_image_rgb(path)
    assert got.shape == (40, 24, 3) and got.dtype == np.uint8
    # Orientation 6: the upright image is the stored one turned 90 degrees clockwise.
    np.testing.assert_array_equal(got, np.rot90(plain, k=-1))
    assert np.abs(got.astype(int) - np.rot90(stored, k=-1)).max() <= 8
    assert decode_image(path).size == (24, 40)
    # Every caller reads it upright: bundles, and image folders (native size from the header).
    np.testing.assert_array_equal(export.load_image(path), got)
    for cls in ("a", "b"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        Image.fromarray(stored).save(tmp_path / "folder" / cls / "x.jpg", quality=95, exif=exif)
    ds = load_image_folder(tmp_path / "folder", progress=False)
    assert ds.images.shape == (2, 40, 24, 3)
    np.testing.assert_array_equal(ds.images[0], got)
    np.testing.assert_array_equal(to_rgb_uint8(Image.open(path)), got)


def test_cmyk_jpeg(tmp_path):
    rgb = _smooth(16, 20)
    path = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    got = read_image_rgb(path)
    assert got.shape == (16, 20, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - rgb).mean() < 4


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    wide = (np.arange(6 * 8, dtype=np.uint16).reshape(6, 8) * 1365)  # 0 .. 64,155
    path = tmp_path / "depth.png"
    Image.fromarray(wide).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    got = read_image_rgb(path)
    assert got.shape == (6, 8, 3)
    expected = np.round(wide / 257).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], expected)
    assert len(np.unique(got)) == 48  # a gradient, not clipped to black-and-white


def test_palette_png_with_transparency(tmp_path):
    pal = Image.new("P", (5, 4))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    idx = np.array([[0, 1, 2, 1, 0]] * 4, np.uint8)
    pal.putdata(idx.ravel().tolist())
    path = tmp_path / "icon.png"
    pal.save(path, transparency=1)  # palette entry 1 (green) transparent
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    got = read_image_rgb(path)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(got, colours[idx])  # alpha dropped: palette colour kept


def test_rgba_and_la_png_drop_alpha(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # a fully transparent pixel keeps its stored colour
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    np.testing.assert_array_equal(read_image_rgb(path), rgba[..., :3])
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    np.testing.assert_array_equal(read_image_rgb(path), np.repeat(la[..., :1], 3, axis=-1))
    bilevel = tmp_path / "bw.png"
    Image.fromarray(np.eye(4, dtype=bool)).save(bilevel)
    np.testing.assert_array_equal(read_image_rgb(bilevel)[..., 0], np.eye(4) * 255)


@pytest.mark.parametrize("pil_allows_truncated", [False, True])
def test_truncated_jpeg_names_the_file(tmp_path, monkeypatch, pil_allows_truncated):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pil_allows_truncated)
    full = tmp_path / "full.jpg"
    Image.fromarray(_smooth(48, 64)).save(full, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    for read in (read_image_rgb, export.load_image):
        with pytest.raises(ValueError, match=r"cut\.jpg.*truncated"):
            read(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is pil_allows_truncated
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image_rgb(tmp_path / "missing.png")


def test_array_conversion():
    assert preprocess_to_rgb is to_rgb_uint8  # preprocessing uses the one conversion
    rgb = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1))
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., :1]), np.repeat(rgb[..., :1], 3, -1))
    rgba = np.concatenate([rgb, np.zeros((3, 4, 1), np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(rgb / 255.0), rgb)  # floats in [0, 1]
    np.testing.assert_array_equal(to_rgb_uint8(rgb.astype(np.int64)), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(np.eye(2, dtype=bool))[..., 1], np.eye(2) * 255)
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(rgba)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_uint8(rgb.astype(np.float32))  # 0..255 floats: an error, not a guess
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        to_rgb_uint8(rgb.astype(np.int32) + 1000)
    with pytest.raises(ValueError, match="shape"):
        to_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        to_rgb_uint8(np.zeros((0, 4, 3), np.uint8))
