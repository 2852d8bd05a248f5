"""Keras Applications ports (MobileNetV2, ResNet50) and the h5py reader of Keras' legacy .h5 files.

The port is checked against Keras 3 itself (JAX backend, in a subprocess:
``tests/keras_reference.py``): Keras builds both networks with random weights and random
BatchNorm statistics, saves them in the legacy HDF5 layout of the Keras Applications downloads
and computes logits on two matplotlib sample photos; ``jaxcnn.pretrained.load`` reads the files
and must give the same logits (max abs diff <= 1e-4 x max |logit|, same top-1 and top-5). These
tests skip without ``keras`` (``pip install -e .[test]`` has it); the reader and name-map tests
below them need only h5py.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from PIL import Image

import jaxcnn.pretrained as pretrained
from jaxcnn.models import count_params, create, param_counts
from jaxcnn.models.mobilenet_v2 import make_divisible
from jaxcnn.pretrained import keras_applications as kapps
from jaxcnn.pretrained.keras_h5 import read_keras_h5, weight_key
from jaxcnn.pretrained.preprocess import resize_shorter_crop_normalize

HERE = Path(__file__).parent
NETS = ("mobilenet_v2", "resnet50")
KERAS_COUNTS = {"mobilenet_v2": 3_538_984, "resnet50": 25_636_712}
SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


def _sample_image(name: str) -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data(name)) as im:
        return np.asarray(im.convert("RGB"))


# --- name maps, reader errors, missing files (no Keras needed) -------------------------------


def _keras_layout_state(name: str) -> dict[str, np.ndarray]:
    """Zeros under every Keras key of the net, in Keras' array layouts."""
    spec = pretrained.PRETRAINED[name]
    model = create(spec.model, num_classes=1000, **spec.model_options)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    state = {}
    for flat_path, leaf in flatten_dict(shapes).items():
        shape = leaf.shape
        if "depthwise" in flat_path and len(shape) == 4:
            shape = (*shape[:2], shape[3], shape[2])
        state[spec.name(flat_path[0], flat_path[1:])] = np.zeros(shape, np.float32)
    return state


def _write_legacy_h5(path: Path, state: dict[str, np.ndarray], extra_layers=()) -> None:
    """A Keras-2-style legacy weights file holding ``state`` (``layer/weight`` keys)."""
    layers: dict[str, list[str]] = {}
    for key in state:
        layer, weight = key.rsplit("/", 1)
        layers.setdefault(layer, []).append(weight)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in (*layers, *extra_layers)]
        for layer, weights in layers.items():
            group = f.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}/{w}:0".encode() for w in weights]
            for w in weights:
                group[f"{layer}/{w}:0"] = state[f"{layer}/{w}"]
        for layer in extra_layers:  # weightless layers, as Keras writes ReLU or Add
            f.create_group(layer).attrs["weight_names"] = np.array([], dtype="S1")


def test_name_maps_cover_every_keras_weight():
    for name, n_keys in (("mobilenet_v2", 262), ("resnet50", 320)):
        state = _keras_layout_state(name)
        assert len(state) == n_keys
    mobilenet = _keras_layout_state("mobilenet_v2")
    assert mobilenet["block_1_depthwise/kernel"].shape == (3, 3, 96, 1)
    assert {"Conv1/kernel", "bn_Conv1/gamma", "Conv_1_bn/moving_variance", "predictions/bias",
            "expanded_conv_project_BN/beta", "block_16_expand/kernel"} <= set(mobilenet)
    resnet = _keras_layout_state("resnet50")
    assert resnet["conv1_conv/kernel"].shape == (7, 7, 3, 64)
    assert resnet["conv2_block1_0_conv/kernel"].shape == (1, 1, 64, 256)
    assert resnet["conv5_block3_3_bn/moving_mean"].shape == (2048,)
    assert resnet["predictions/kernel"].shape == (2048, 1000)
    with pytest.raises(ValueError, match="no Keras name for Flax leaf params/stage1_block1/x"):
        kapps.resnet50_keras_name("params", ("stage1_block1", "x", "kernel"))
    with pytest.raises(ValueError, match="no Keras name"):
        kapps.mobilenet_v2_keras_name("batch_stats", ("stem", "bn", "scale"))


def test_to_flax_array_transposes_only_depthwise_kernels():
    k = np.arange(3 * 3 * 5, dtype=np.float32).reshape(3, 3, 5, 1)
    dw = kapps.to_flax_array(("block1", "depthwise", "conv", "kernel"), k)
    assert dw.shape == (3, 3, 1, 5)
    np.testing.assert_array_equal(dw[:, :, 0, :], k[:, :, :, 0])
    conv = np.ones((1, 1, 4, 6), np.float64)
    assert kapps.to_flax_array(("block1", "expand", "conv", "kernel"), conv).dtype == np.float32
    assert kapps.to_flax_array(("stem_conv", "kernel"), conv).shape == (1, 1, 4, 6)


def test_reader_layout_and_weight_keys(tmp_path):
    state = {"Conv1/kernel": np.ones((3, 3, 3, 4), np.float32),
             "bn_Conv1/gamma": np.full(4, 2.0, np.float32)}
    path = tmp_path / "w.h5"
    _write_legacy_h5(path, state, extra_layers=("Conv1_relu",))
    got = read_keras_h5(path)
    assert list(got) == ["Conv1/kernel", "bn_Conv1/gamma"]
    np.testing.assert_array_equal(got["bn_Conv1/gamma"], 2.0)
    assert weight_key("Conv1", "Conv1_1/kernel:0") == "Conv1/kernel"
    assert weight_key("block_1_depthwise", "block_1_depthwise/depthwise_kernel:0") == (
        "block_1_depthwise/depthwise_kernel"
    )
    # Keras splits long attribute lists into layer_names0, layer_names1, ...
    with h5py.File(path, "a") as f:
        names = list(f.attrs["layer_names"])
        del f.attrs["layer_names"]
        f.attrs["layer_names0"], f.attrs["layer_names1"] = names[:1], names[1:]
    assert list(read_keras_h5(path)) == ["Conv1/kernel", "bn_Conv1/gamma"]


@pytest.mark.parametrize("name", NETS)
def test_missing_or_extra_layer_is_reported(name, tmp_path):
    state = _keras_layout_state(name)
    dropped = "block_5_project_BN" if name == "mobilenet_v2" else "conv4_block2_2_bn"
    for key in [k for k in state if k.startswith(dropped + "/")]:
        del state[key]
    state["extra_dense/kernel"] = np.zeros((4, 2), np.float32)
    path = tmp_path / "bad.h5"
    _write_legacy_h5(path, state)
    with pytest.raises(ValueError) as info:
        pretrained.load(name, path=path)
    msg = str(info.value)
    assert f"checkpoint does not match model {name!r}" in msg
    assert "model leaves missing from the checkpoint (4)" in msg
    assert f"{dropped}/moving_variance" in msg and f"{dropped}/gamma" in msg
    assert "checkpoint entries not used by the model (1):\n  extra_dense/kernel" in msg


def test_reader_rejects_broken_files(tmp_path):
    path = tmp_path / "w.h5"
    _write_legacy_h5(path, {"Conv1/kernel": np.ones((1, 1, 3, 4), np.float32)})
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = [b"Conv1", b"bn_Conv1"]
    with pytest.raises(ValueError, match="layer 'bn_Conv1' is listed in 'layer_names' but has no"):
        read_keras_h5(path)
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = [b"Conv1"]
        f["Conv1"].attrs["weight_names"] = [b"Conv1/kernel:0", b"Conv1/bias:0"]
    with pytest.raises(ValueError, match="weight 'Conv1/bias:0' of layer 'Conv1' is listed"):
        read_keras_h5(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not Keras weights in the legacy layout"):
        read_keras_h5(other)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        read_keras_h5(text)
    with pytest.raises(FileNotFoundError, match="no Keras weight file"):
        read_keras_h5(tmp_path / "missing.h5")


def test_older_mobilenet_names_clash_is_reported():
    state = {"Logits/kernel": np.zeros(1), "predictions/kernel": np.zeros(1)}
    with pytest.raises(ValueError, match="Logits/kernel and predictions/kernel -> predictions"):
        kapps.canonical_mobilenet_v2_names(state)


@pytest.mark.parametrize("name", NETS)
def test_missing_weights_give_advice(name, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    calls = []

    def no_network(url, dest, progress=True):
        calls.append((url, dest))
        raise OSError("network is unreachable")

    monkeypatch.setattr(kapps, "download", no_network)
    filename, url = kapps.KERAS_FILES[name]
    with pytest.raises(FileNotFoundError) as info:
        pretrained.load(name)
    msg = str(info.value)
    assert str(tmp_path / "weights" / filename) in msg
    assert str(tmp_path / "home" / ".keras" / "models" / filename) in msg
    assert url in msg and "network is unreachable" in msg
    assert "JAXCNN_WEIGHTS_DIR" in msg and f"path='/path/to/{filename}'" in msg
    assert calls == [(url, str(tmp_path / "home" / ".keras" / "models" / filename))]
    assert url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
    # With KERAS_HOME set (as Keras honours it), its models/ folder is searched too and
    # receives the download.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(FileNotFoundError, match="kh/models/" + filename.replace(".", r"\.")):
        kapps.default_path(name)
    assert calls[-1][1] == str(tmp_path / "kh" / "models" / filename)
    assert kapps.search_dirs() == [str(tmp_path / d) for d in ("weights", "kh/models",
                                                               "home/.keras/models")]
    del calls[1:]
    # A file in JAXCNN_WEIGHTS_DIR is found without any download.
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / filename).write_bytes(b"")
    assert kapps.default_path(name) == str(tmp_path / "weights" / filename)
    assert len(calls) == 1


def test_download_is_atomic(tmp_path, monkeypatch):
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = []
    dest = tmp_path / "cache" / "w.h5"
    assert kapps.download(src.as_uri(), str(dest), progress=False) == str(dest)
    assert dest.read_bytes() == src.read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_text("<html>not found</html>")
    dest2 = tmp_path / "cache" / "w2.h5"
    with pytest.raises(OSError, match="not HDF5"):
        kapps.download(bad.as_uri(), str(dest2), progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["w.h5"]


# --- the MobileNetV2 module --------------------------------------------------------------------


def test_mobilenet_v2_shapes_options_and_errors():
    def shapes(model, shape, **kwargs):
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        return jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False, **kwargs), x
        )

    model = create("mobilenet_v2", num_classes=1000)
    out, variables = shapes(model, (2, 224, 224, 3))
    assert (out.shape, out.dtype) == ((2, 1000), jnp.float32)
    assert count_params(variables["params"]) == 3_504_872
    assert count_params(variables["batch_stats"]) == 34_112
    flat = flatten_dict(variables["params"])
    assert "expand" not in variables["params"]["block0"]
    assert flat[("block1", "depthwise", "conv", "kernel")].shape == (3, 3, 1, 96)
    assert flat[("head", "kernel")].shape == (1280, 1000)
    assert len([k for k in variables["params"] if k.startswith("block")]) == 17
    feats, _ = shapes(model, (2, 224, 224, 3), return_features=True)
    assert feats.shape == (2, 1280)
    inter = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, capture_intermediates=True),
        jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32),
    )["intermediates"]
    assert inter["stem"]["__call__"][0].shape == (1, 112, 112, 32)
    assert inter["block16"]["__call__"][0].shape == (1, 7, 7, 320)
    # other sizes, bf16 compute, the convolutional base
    out, variables = shapes(create("mobilenet_v2", num_classes=5, dtype=jnp.bfloat16),
                            (2, 97, 130, 3))
    assert (out.shape, out.dtype) == ((2, 5), jnp.float32)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    base, variables = shapes(create("mobilenet_v2", include_top=False), (2, 96, 96, 3))
    assert base.shape == (2, 3, 3, 1280) and "head" not in variables["params"]
    pooled, _ = shapes(create("mobilenet_v2", include_top=False, pooling="max"), (2, 96, 96, 3))
    assert pooled.shape == (2, 1280)
    wide, variables = shapes(create("mobilenet_v2", alpha=1.4), (1, 64, 64, 3),
                             return_features=True)
    assert wide.shape == (1, 1792) and variables["params"]["stem"]["conv"]["kernel"].shape[-1] == 48
    assert [make_divisible(v) for v in (32 * 0.35, 24 * 0.75, 1280 * 1.4, 16)] == [16, 24, 1792, 16]
    with pytest.raises(ValueError, match="H, W >= 32"):
        shapes(model, (1, 16, 16, 3))
    with pytest.raises(ValueError, match="alpha"):
        shapes(create("mobilenet_v2", alpha=0), (1, 32, 32, 3))
    with pytest.raises(ValueError, match="pooling"):
        shapes(create("mobilenet_v2", include_top=False, pooling="mean"), (1, 32, 32, 3))


def test_mobilenet_v2_bn_momentum_is_keras():
    # One block is enough to see the running statistics move (the full net compiles slowly).
    model = create("mobilenet_v2", num_classes=3, stages=((1, 16, 1, 1),))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
    _, updates = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, x)
    old = variables["batch_stats"]["stem"]["bn"]["mean"]
    new = updates["batch_stats"]["stem"]["bn"]["mean"]
    # Keras' momentum 0.999: running statistics move 0.1% of the way to the batch statistics.
    assert model.bn_momentum == 0.999 and model.bn_epsilon == 1e-3
    assert 0 < float(jnp.abs(new - old).max()) < 0.01


# --- the Keras reference (one subprocess for the module) -------------------------------------


def _keras3_missing() -> str | None:
    """Why the Keras reference cannot run, or None. Keras is imported only in the subprocess
    (with ``KERAS_BACKEND=jax``): importing it here would pick its default backend, TensorFlow."""
    try:
        version = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return "the Keras reference needs keras>=3 (pip install -e .[test])"
    if int(version.split(".")[0]) < 3:
        return f"the Keras reference needs keras>=3 (JAX backend); found keras {version}"
    return None


@pytest.fixture(scope="module", autouse=True)
def keras_job(request, tmp_path_factory):
    """Starts ``tests/keras_reference.py`` when the module's first test runs (only if a test
    using ``keras_run`` is selected), so that Keras works while the tests above run. Yields
    ``(process, out_dir, inputs per net, raw uint8 images, start time)``, or a skip reason."""
    wanted = any(
        "keras_run" in getattr(item, "fixturenames", ())
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    )
    reason = _keras3_missing() if wanted else "no test of this run needs the Keras reference"
    if reason:
        yield reason
        return
    out = tmp_path_factory.mktemp("keras_ref")
    images = [_sample_image(s) for s in SAMPLES]
    inputs = {name: pretrained.preprocess(name, images) for name in NETS}
    raw = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.savez(out / "inputs.npz", raw=raw, **inputs)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", KERAS_HOME=str(out / "home"))
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "keras_reference.py"), str(out)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc, out, inputs, raw, time.perf_counter()
    if proc.poll() is None:  # the Keras tests were not reached (e.g. -x after a failure)
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def keras_run(keras_job):
    """Keras' files and outputs: ``(out_dir, reference dict, preprocessed inputs per net, raw
    uint8 images, seconds from the subprocess's start until it finished)``."""
    if isinstance(keras_job, str):
        pytest.skip(keras_job)
    proc, out, inputs, raw, start = keras_job
    try:
        returncode = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the Keras reference took over 600 s")
    seconds = time.perf_counter() - start
    if returncode != 0:
        log = (out / "log.txt").read_text()
        pytest.fail(f"the Keras reference failed (exit {returncode}):\n{log[-8000:]}")
    reference = dict(np.load(out / "reference.npz"))
    return out, reference, inputs, raw, seconds


@pytest.fixture(scope="module")
def ported(keras_run):
    """Per net: (model, variables, logits (2, 1000), pooled features) from the Keras files."""
    out, _, inputs, _, _ = keras_run
    results = {}
    for name in NETS:
        model, variables = pretrained.load(name, path=out / f"{name}.h5")

        @jax.jit
        def run(variables, x, model=model):
            return (
                model.apply(variables, x, train=False),
                model.apply(variables, x, train=False, return_features=True),
            )

        logits, feats = jax.device_get(run(variables, inputs[name]))
        results[name] = (model, variables, logits, feats)
    return results


@pytest.mark.parametrize("name", NETS)
def test_port_matches_keras(name, keras_run, ported):
    _, reference, _, _, seconds = keras_run
    model, variables, logits, feats = ported[name]
    ref = reference[f"{name}_logits"]
    assert logits.shape == ref.shape == (len(SAMPLES), 1000) and logits.dtype == np.float32
    assert np.isfinite(ref).all()
    scale = np.abs(ref).max()
    ratio = np.abs(logits - ref).max() / scale
    print(f"\n{name} port vs Keras: max abs logit diff / max |logit| = {ratio:.3g} "
          f"(max |logit| {scale:.3g}; Keras reference took {seconds:.0f} s)")
    assert ratio <= 1e-4, ratio
    np.testing.assert_array_equal(logits.argmax(axis=1), ref.argmax(axis=1))
    top5 = np.argsort(-ref, axis=1)[:, :5]
    np.testing.assert_array_equal(np.argsort(-logits, axis=1)[:, :5], top5)
    # The two photos give clearly different logits: the comparison is not of two constants.
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * scale
    # The features feed the head.
    head = variables["params"]["head"]
    np.testing.assert_allclose(
        feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), logits,
        rtol=1e-5, atol=1e-4 * scale,
    )
    assert feats.shape == (len(SAMPLES), 2048 if name == "resnet50" else 1280)


@pytest.mark.parametrize("name", NETS)
def test_param_counts_match_keras(name, keras_run):
    _, reference, _, _, _ = keras_run
    spec = pretrained.PRETRAINED[name]
    model = create(spec.model, num_classes=1000, **spec.model_options)
    ours = param_counts(model, (1, 224, 224, 3))["total"]
    assert int(reference[f"{name}_count"]) == ours == KERAS_COUNTS[name]
    if name == "mobilenet_v2":
        for alpha in (0.35, 1.4):
            ours = param_counts(create(name, num_classes=1000, alpha=alpha), (1, 224, 224, 3))
            assert ours["total"] == int(reference[f"mobilenet_v2_{alpha}_count"]), alpha


@pytest.mark.parametrize("name", NETS)
def test_preprocess_matches_keras_preprocess_input(name, keras_run):
    _, reference, _, raw, _ = keras_run
    # 224x224 images with resize 224: no resampling, only the normalisation is compared.
    p = dataclasses.replace(pretrained.PRETRAINED[name].preprocessing, resize=224)
    ours = resize_shorter_crop_normalize(raw, p)
    np.testing.assert_allclose(ours, reference[f"{name}_preprocess"], rtol=0, atol=1e-5)


def test_full_model_h5_reads_like_weights_file(keras_run):
    out = keras_run[0]
    weights = read_keras_h5(out / "mobilenet_v2.h5")
    full = read_keras_h5(out / "mobilenet_v2_full.h5")
    assert list(full) == list(weights) and len(weights) == 262
    for key, value in weights.items():
        np.testing.assert_array_equal(full[key], value, err_msg=key)
    assert weights["expanded_conv_depthwise/kernel"].shape == (3, 3, 32, 1)
    assert weights["bn_Conv1/moving_variance"].shape == (32,)


def _copy_as_keras2(src: Path, dst: Path, rename_layer=lambda layer: layer) -> None:
    """Rewrite a Keras 3 legacy .h5 with Keras 2's weight names (``<layer>/<w>:0``,
    ``depthwise_kernel``) and optionally other layer names."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        layers = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        g.attrs["layer_names"] = [rename_layer(n).encode() for n in layers]
        for layer in layers:
            new = rename_layer(layer)
            group = g.create_group(new)
            names = []
            for w in f[layer].attrs["weight_names"]:
                w = w.decode() if isinstance(w, bytes) else w
                short = w.rsplit("/", 1)[-1]
                if short == "kernel" and layer.endswith("depthwise"):
                    short = "depthwise_kernel"
                name = f"{new}/{short}:0"
                group[name] = f[layer][w][()]
                names.append(name.encode())
            group.attrs["weight_names"] = names


def _old_mobilenet_name(layer: str) -> str:
    """Names of the oldest MobileNetV2 weight files (``mobl{i}_conv_{i}_expand``, ``Logits``)."""
    if layer == "predictions":
        return "Logits"
    for part in ("expand", "depthwise", "project"):
        for i in range(17):
            prefix = f"block_{i}_" if i else "expanded_conv_"
            if layer == f"{prefix}{part}":
                return f"mobl{i}_conv_{i}_{part}"
            if layer == f"{prefix}{part}_BN":
                return f"bn{i}_conv_{i}_bn_{part}"
    return layer


def test_keras2_names_and_older_mobilenet_names_load_the_same(keras_run, tmp_path):
    out = keras_run[0]
    _, expected = pretrained.load("mobilenet_v2", path=out / "mobilenet_v2.h5")
    expected = flatten_dict(expected)
    for rename, old_key in (
        (lambda layer: layer, "block_1_depthwise/depthwise_kernel"),
        (_old_mobilenet_name, "mobl1_conv_1_depthwise/depthwise_kernel"),
    ):
        path = tmp_path / "keras2.h5"
        _copy_as_keras2(out / "mobilenet_v2.h5", path, rename)
        with h5py.File(path, "r") as f:
            stored = f[old_key.split("/")[0]].attrs["weight_names"][0]
            assert stored in (old_key + ":0", (old_key + ":0").encode())
        assert old_key in read_keras_h5(path)
        _, got = pretrained.load("mobilenet_v2", path=path)
        got = flatten_dict(got)
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=str(key))
