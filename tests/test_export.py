"""jaxcnn.export: bundle round trip, resizing, channel handling and clear errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn import export, models

NAMES = ["apple", "banana", "cherry"]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
SIZE = (8, 8)


@models.register("_test_export_tiny")
class _Tiny(nn.Module):
    """Conv -> BatchNorm -> ReLU -> global mean -> Dense head; float input (N, H, W, C)."""

    num_classes: int = 10
    width: int = 4
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def _variables(width=4, seed=0):
    model = models.create("_test_export_tiny", num_classes=3, width=width)
    v = model.init(jax.random.key(seed), jnp.zeros((1, *SIZE, 3)), train=False)
    # non-trivial BatchNorm statistics so the round trip checks them too
    stats = jax.tree.map(lambda a: a + 0.3, v["batch_stats"])
    return model, {"params": v["params"], "batch_stats": stats}


def _save(path, variables, **kw):
    args = dict(
        model_name="_test_export_tiny",
        model_options={"width": 4},
        variables=variables,
        class_names=NAMES,
        preprocessing=dict(input_size=SIZE, mean=MEAN, std=STD),
        metrics={"test_accuracy": np.float32(0.75), "epochs": 3},
    )
    args.update(kw)
    return export.save(path, **args)


@pytest.fixture
def saved(tmp_path):
    model, variables = _variables()
    path = _save(tmp_path / "run" / "bundle", variables)
    return model, variables, path


def _reference_logits(model, variables, images):
    x = (images.astype(np.float32) / 255.0 - np.array(MEAN)) / np.array(STD)
    return np.asarray(model.apply(variables, jnp.asarray(x, jnp.float32), train=False))


def test_round_trip_identical_logits(saved):
    model, variables, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "variables.msgpack"]
    info = json.loads((path / "bundle.json").read_text())
    assert info["format_version"] == export.FORMAT_VERSION
    assert info["num_classes"] == 3 and info["class_names"] == NAMES
    assert info["metrics"]["test_accuracy"] == pytest.approx(0.75)
    assert info["preprocessing"]["input_size"] == [8, 8] and "created" in info

    bundle = export.load(path, batch_size=4)
    assert bundle.class_names == NAMES and bundle.model_name == "_test_export_tiny"
    assert bundle.input_size == SIZE and bundle.metrics["epochs"] == 3
    leaves = jax.tree.leaves(jax.tree.map(np.array_equal, bundle.variables, variables))
    assert all(leaves)

    images = np.random.default_rng(0).integers(0, 256, (10, *SIZE, 3), dtype=np.uint8)
    logits = bundle.predict_logits(images)  # 10 images in batches of 4: last one padded
    want = _reference_logits(model, variables, images)
    assert logits.shape == (10, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6)
    probs = bundle.predict(images)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, jax.nn.softmax(want), rtol=1e-5, atol=1e-6)
    # single image (H, W, C) and a list of images
    np.testing.assert_allclose(bundle.predict(images[3]), probs[3:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bundle.predict([images[0], images[1]]), probs[:2], atol=1e-6)
    top = bundle.top_k(images[:2], k=2)
    assert len(top) == 2 and len(top[0]) == 2
    assert top[0][0][0] == NAMES[int(probs[0].argmax())]
    assert top[0][0][1] >= top[0][1][1]


def test_tta_is_stored_and_applied(tmp_path):
    """A bundle saved with tta="flip" predicts tta_logits of the preprocessed images."""
    from jaxcnn.evaluate import tta_logits

    model, variables = _variables()
    flip = _save(tmp_path / "flip", variables, tta="flip")
    assert json.loads((flip / "bundle.json").read_text())["tta"] == "flip"
    bundle = export.load(flip, batch_size=4)
    assert bundle.tta == "flip" and "tta='flip'" in repr(bundle)
    images = np.random.default_rng(4).integers(0, 256, (6, *SIZE, 3), dtype=np.uint8)
    x = jnp.asarray((images / 255.0 - np.array(MEAN)) / np.array(STD), jnp.float32)
    want = tta_logits(lambda v: model.apply(variables, v, train=False), x, "flip")
    got = bundle.predict_logits(images)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bundle.predict(images), jax.nn.softmax(want), atol=1e-6)

    plain = export.load(_save(tmp_path / "plain", variables), batch_size=4)
    assert plain.tta == "none"
    np.testing.assert_allclose(plain.predict_logits(images), _reference_logits(
        model, variables, images), rtol=1e-6, atol=1e-6)
    assert np.abs(plain.predict_logits(images) - got).max() > 1e-3
    # load(tta=...) overrides the stored mode
    np.testing.assert_allclose(export.load(flip, tta="none").predict_logits(images),
                               plain.predict_logits(images), atol=1e-6)
    with pytest.raises(ValueError, match="unknown TTA mode"):
        export.load(flip, tta="mirror")


def test_bundle_without_tta_key_loads_as_none_and_bad_modes_fail(saved, tmp_path):
    model, variables, path = saved
    info = json.loads((path / "bundle.json").read_text())
    del info["tta"]  # as written before TTA existed
    (path / "bundle.json").write_text(json.dumps(info))
    bundle = export.load(path)
    assert bundle.tta == "none"
    images = np.random.default_rng(5).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(bundle.predict_logits(images),
                               _reference_logits(model, variables, images), atol=1e-6)
    info["tta"] = "sideways"
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="bundle.json.*unknown TTA mode 'sideways'"):
        export.load(path)
    with pytest.raises(ValueError, match="unknown TTA mode 'flips'.*'flip_translate'"):
        _save(tmp_path / "bad", variables, tta="flips")
    assert not (tmp_path / "bad").exists()


def test_resizes_other_sizes_and_converts_channels(saved, tmp_path):
    _, _, path = saved
    bundle = export.load(path)
    big = np.random.default_rng(1).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    small = np.stack(
        [np.asarray(Image.fromarray(im).resize((8, 8), Image.Resampling.BILINEAR)) for im in big]
    )
    np.testing.assert_allclose(bundle.predict(big), bundle.predict(small), atol=1e-6)
    assert bundle.prepare(big).shape == (3, 8, 8, 3)

    rgba = np.concatenate([small, np.full((3, 8, 8, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_allclose(bundle.predict(rgba), bundle.predict(small), atol=1e-6)
    gray = small[..., 0]  # (N, H, W) grayscale batch -> repeated to RGB
    np.testing.assert_allclose(
        bundle.predict(gray), bundle.predict(np.repeat(gray[..., None], 3, -1)), atol=1e-6
    )
    assert bundle.predict(gray[0]).shape == (1, 3)  # (H, W) single gray image

    file = tmp_path / "img.png"
    Image.fromarray(big[0]).save(file)
    np.testing.assert_allclose(bundle.predict(file), bundle.predict(big[:1]), atol=1e-6)


def test_save_replaces_existing_bundle_atomically(saved):
    _, _, path = saved
    _, other = _variables(seed=1)
    _save(path, other, metrics={"test_accuracy": 0.5})
    bundle = export.load(path)
    assert bundle.metrics == {"test_accuracy": 0.5}
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, bundle.variables, other)))
    # no temporary or old folders left beside the bundle
    assert [p.name for p in path.parent.iterdir()] == ["bundle"]


def test_missing_files_and_bad_versions(saved, tmp_path):
    _, _, path = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.load(tmp_path / "nowhere")
    (path / "variables.msgpack").rename(tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="variables.msgpack"):
        export.load(path)
    (tmp_path / "weights").rename(path / "variables.msgpack")
    info = json.loads((path / "bundle.json").read_text())
    info["format_version"] = 99
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="format version 99"):
        export.load(path)
    (path / "bundle.json").unlink()
    with pytest.raises(FileNotFoundError, match="bundle.json"):
        export.load(path)


def test_save_validates_inputs(tmp_path):
    _, variables = _variables()
    with pytest.raises(ValueError, match="unknown model"):
        _save(tmp_path / "a", variables, model_name="no_such_model")
    with pytest.raises(ValueError, match="wrong shapes"):
        _save(tmp_path / "b", variables, model_options={"width": 5})
    with pytest.raises(ValueError, match="unique"):
        _save(tmp_path / "c", variables, class_names=["a", "a", "b"])
    with pytest.raises(ValueError, match="input_size"):
        _save(tmp_path / "d", variables, preprocessing=dict(input_size=8, mean=MEAN, std=STD))
    with pytest.raises(ValueError, match="cannot be stored"):
        _save(tmp_path / "e", variables, model_options={"width": 4, "act": nn.relu})
    keep = tmp_path / "not_a_bundle"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        _save(keep, variables)
    assert (keep / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_dtype_option_and_bad_images(tmp_path):
    model, variables = _variables()
    path = _save(tmp_path / "bf16", variables, model_options={"width": 4, "dtype": jnp.bfloat16})
    bundle = export.load(path)
    assert bundle.model_options["dtype"] == jnp.bfloat16
    img = np.zeros((2, *SIZE, 3), np.uint8)
    assert bundle.predict(img).shape == (2, 3)
    with pytest.raises(ValueError, match="uint8"):
        bundle.predict(img.astype(np.float32))
    with pytest.raises(ValueError, match="channels"):
        bundle.predict(np.zeros((2, *SIZE, 5), np.uint8))
    with pytest.raises(ValueError, match="k must be"):
        bundle.top_k(img, k=4)


def test_load_image_decodes_every_pixel(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries set it
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 20, 3), dtype=np.uint8)
                    ).save(full)
    assert export.load_image(full).shape == (30, 20, 3)
    half = tmp_path / "half.jpg"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"half\.jpg.*truncated"):
        export.load_image(half)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        export.load_image(text)
    with pytest.raises(FileNotFoundError, match="not found"):
        export.load_image(tmp_path / "nothing.png")


def test_cnn3_bundle(tmp_path):
    """The real cnn3 survives the round trip (params and batch_stats)."""
    model = models.create("cnn3", num_classes=3)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, 3))
    )
    rng = np.random.default_rng(0)

    def fill(path, s):  # He-like random weights; positive BatchNorm variances (eager init is slow)
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 10
        return jnp.asarray(rng.normal(0, (2 / fan_in) ** 0.5, s.shape), jnp.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    path = export.save(
        tmp_path / "cnn3",
        model_name="cnn3",
        model_options={},
        variables=variables,
        class_names=NAMES,
        preprocessing=dict(input_size=(32, 32), mean=MEAN, std=STD),
    )
    bundle = export.load(path, batch_size=2)
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x = (images / 255.0 - np.array(MEAN)) / np.array(STD)
    want = model.apply(variables, jnp.asarray(x, jnp.float32), train=False)
    np.testing.assert_allclose(bundle.predict_logits(images), want, rtol=1e-5, atol=1e-5)
