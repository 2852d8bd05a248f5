"""Image-folder datasets: scanning, skipped files, colour conversion, errors, class weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data import balanced_class_weights, load_image_folder, scan_image_folder
from jaxcnn.data.image_folder import decode_image, read_image_rgb


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _make_flat(root, rng):
    """cat: 3 RGB jpg + 1 RGBA png; dog: 2 gray png + corrupt.jpg + notes.txt."""
    for i in range(3):
        _png(root / "cat" / f"c{i}.jpg", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    _png(root / "cat" / "alpha.png", rgba)
    for i in range(2):
        _png(root / "dog" / f"g{i}.png", np.full((12, 10), 40 * (i + 1), np.uint8))
    (root / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")
    return rgba


def test_scan_flat_reports_counts_skips_and_imbalance(tmp_path):
    _make_flat(tmp_path, np.random.default_rng(0))
    scan = scan_image_folder(tmp_path)
    assert scan.layout == "flat"
    assert scan.class_names == ("cat", "dog")
    np.testing.assert_array_equal(scan.counts(), [4, 2])
    assert scan.imbalance_ratio == 2.0
    reasons = {p.name: r for p, r in scan.skipped}
    assert set(reasons) == {"corrupt.jpg", "notes.txt"}
    assert "corrupt" in reasons["corrupt.jpg"]
    assert "not an image" in reasons["notes.txt"]
    text = scan.report()
    assert "imbalance ratio" in text and "corrupt.jpg" in text and "notes.txt" in text


def test_load_flat_converts_rgba_and_gray_and_resizes(tmp_path):
    rgba = _make_flat(tmp_path, np.random.default_rng(1))
    ds = load_image_folder(tmp_path, image_size=(8, 12), progress=False)
    assert ds.images.shape == (6, 8, 12, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == ("cat", "dog")
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 0, 1, 1])
    # gray images: all three channels equal and the constant value kept
    gray = ds.images[ds.labels == 1]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    assert sorted(int(g[0, 0, 0]) for g in gray) == [40, 80]
    # RGBA: alpha dropped, RGB kept (compare at native size)
    native = load_image_folder(tmp_path, image_size=(16, 16), progress=False)
    alpha_idx = sorted(p.name for p in (tmp_path / "cat").iterdir()).index("alpha.png")
    np.testing.assert_array_equal(native.images[alpha_idx], rgba[..., :3])


def test_native_size_needs_equal_sizes(tmp_path):
    _make_flat(tmp_path, np.random.default_rng(2))
    with pytest.raises(ValueError, match="different sizes"):
        load_image_folder(tmp_path, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path, image_size=(0, 4), progress=False)


def test_split_layout_returns_train_and_val(tmp_path):
    rng = np.random.default_rng(3)
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("a", "b", "c"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png",
                     rng.integers(0, 256, (9, 9, 3), dtype=np.uint8))
    scan = scan_image_folder(tmp_path)
    assert scan.layout == "split" and scan.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(scan.counts("train"), [3, 3, 3])
    np.testing.assert_array_equal(scan.counts("val"), [1, 1, 1])
    train, val = load_image_folder(tmp_path, progress=False, scan=scan)
    assert len(train) == 9 and len(val) == 3 and train.image_shape == (9, 9, 3)
    assert val.class_names == train.class_names


def test_val_class_missing_from_train_is_an_error(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    for cls in ("a", "b"):
        _png(tmp_path / "train" / cls / "0.png", img)
    _png(tmp_path / "val" / "zebra" / "0.png", img)
    with pytest.raises(ValueError, match="zebra"):
        scan_image_folder(tmp_path)


def test_errors_missing_path_empty_class_one_class(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    img = np.zeros((4, 4, 3), np.uint8)
    _png(tmp_path / "only" / "x.png", img)
    with pytest.raises(ValueError, match="at least 2"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"\['empty'\].*no readable images"):
        scan_image_folder(tmp_path)


def test_stratified_split_of_a_loaded_folder(tmp_path):
    rng = np.random.default_rng(4)
    for cls, n in (("a", 20), ("b", 10)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    ds = load_image_folder(tmp_path, progress=False)
    val, train = ds.split(0.2, seed=0)
    np.testing.assert_array_equal(val.class_counts(), [4, 2])
    np.testing.assert_array_equal(train.class_counts(), [16, 8])


def test_class_weights_balanced():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = balanced_class_weights(labels, 4)
    np.testing.assert_allclose(w, [10 / 24, 10 / 12, 10 / 4, 0.0], rtol=1e-6)
    assert w.dtype == np.float32
    np.testing.assert_allclose(balanced_class_weights(labels, 3)[labels].mean(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="lie in"):
        balanced_class_weights(np.array([0, 5]), 3)


def test_real_flowers_scan(flowers_dir):
    scan = scan_image_folder(flowers_dir, verify=False)
    assert scan.num_classes == 5 and int(scan.counts().sum()) >= 3000


def _truncated_jpeg(path, rng):
    """A real JPEG cut to half its bytes (an interrupted copy or download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = path.with_name("full_" + path.name)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("pil_allows_truncated", [False, True])
def test_truncated_jpeg_is_an_error_even_when_pil_allows_it(tmp_path, monkeypatch,
                                                            pil_allows_truncated):
    from PIL import ImageFile

    # Another library may have set PIL's global switch; truncation must still be an error.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pil_allows_truncated)
    bad = _truncated_jpeg(tmp_path / "half.jpg", np.random.default_rng(7))
    with pytest.raises(ValueError, match=r"half\.jpg.*truncated"):
        read_image_rgb(bad)
    with pytest.raises(ValueError, match="truncated"):
        decode_image(bad)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is pil_allows_truncated  # switch restored
    with pytest.raises(FileNotFoundError, match="not found"):
        decode_image(tmp_path / "missing.jpg")


def test_truncated_jpeg_in_a_folder_is_skipped_and_named(tmp_path):
    rng = np.random.default_rng(8)
    for cls in ("a", "b"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    bad = _truncated_jpeg(tmp_path / "b" / "half.jpg", rng)
    scan = scan_image_folder(tmp_path)  # header checks only: the truncation is found on decode
    assert int(scan.counts().sum()) == 5
    before = len(scan.skipped)
    ds = load_image_folder(tmp_path, image_size=6, scan=scan, progress=False)
    assert len(ds) == 4
    assert [p for p, _ in scan.skipped[before:]] == [bad]
    report = scan.report_skipped(before, what="image(s) that failed to decode")
    assert report.startswith("skipped 1 image(s) that failed to decode:")
    assert str(bad) in report and "truncated" in report
    assert scan.report_skipped(len(scan.skipped)) == ""
