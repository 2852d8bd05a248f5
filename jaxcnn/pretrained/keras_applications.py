"""Keras Applications ImageNet weights (MobileNetV2, ResNet50): where they are and how they map.

The files are the ones ``keras.applications`` downloads (legacy HDF5 layout, read by
``jaxcnn.pretrained.keras_h5.read_keras_h5`` into ``{"<layer>/<weight>": array}``)::

    mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5   14 MB  -> models.MobileNetV2
    resnet50_weights_tf_dim_ordering_tf_kernels.h5               98 MB  -> resnet50(keras_compat)

``default_path(name)`` looks for the file in ``$JAXCNN_WEIGHTS_DIR``, then in Keras' own cache
(``$KERAS_HOME/models`` when ``KERAS_HOME`` is set, and ``~/.keras/models``), and otherwise
downloads it from the Keras URL into that cache (``$KERAS_HOME/models`` or ``~/.keras/models``).

Names, MobileNetV2 (Flax -> Keras layer; ``i`` = 1 .. 16, block 0 has no expand conv)::

    stem/conv, stem/bn                       Conv1, bn_Conv1
    block0/{depthwise,project}/conv, /bn     expanded_conv_{depthwise,project}, ..._BN
    block{i}/{expand,depthwise,project}/conv block_{i}_{expand,depthwise,project}, ..._BN
    head_conv/conv, head_conv/bn             Conv_1, Conv_1_bn
    head                                     predictions

ResNet50 (``resnet50(keras_compat=True)``; stage ``s`` = 1 .. 4 is Keras' ``conv{s+1}``)::

    stem_conv, stem_bn                       conv1_conv, conv1_bn
    stage{s}_block{b}/conv{i}, /bn{i}        conv{s+1}_block{b}_{i}_conv, ..._{i}_bn
    stage{s}_block{b}/proj_conv, /proj_bn    conv{s+1}_block{b}_0_conv, ..._0_bn
    head                                     predictions

Weights: conv/dense ``kernel`` and ``bias`` keep their names; BatchNorm ``gamma``, ``beta``,
``moving_mean``, ``moving_variance`` become params ``scale``, ``bias`` and batch_stats
``mean``, ``var``. Conv2D and Dense kernels are already in Flax's layout; DepthwiseConv2D
kernels (kh, kw, C, 1) are transposed to (kh, kw, 1, C).

Older MobileNetV2 files name layers differently, and Keras (which loads such files by layer
order, not by name) accepts them all; ``canonical_mobilenet_v2_names`` renames the known
variants to the names above before mapping: ``Logits`` -> ``predictions``,
``mobl{i}_conv_{i}_{part}`` -> ``block_{i}_{part}``, ``bn{i}_conv_{i}_bn_{part}`` ->
``block_{i}_{part}_BN`` (``expanded_conv_*`` for block 0) and the Keras 2 weight name
``depthwise_kernel`` -> ``kernel``.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.request
from collections.abc import Callable, Mapping

import numpy as np

__all__ = [
    "KERAS_FILES",
    "canonical_mobilenet_v2_names",
    "default_path",
    "download",
    "mobilenet_v2_keras_name",
    "resnet50_keras_name",
    "search_dirs",
    "to_flax_array",
]

_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

#: network -> (file name, download URL) of its Keras Applications ImageNet weights.
KERAS_FILES: dict[str, tuple[str, str]] = {
    "mobilenet_v2": (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        _BASE_URL + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    ),
    "resnet50": (
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
        _BASE_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    ),
}

_BN_WEIGHTS = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


# --- finding and fetching the files ---------------------------------------------------------


def _keras_cache_dir() -> str:
    """Keras' download cache: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def search_dirs() -> list[str]:
    """Folders searched for a weight file, in order: ``$JAXCNN_WEIGHTS_DIR`` (when set),
    ``$KERAS_HOME/models`` (when set; downloads then go there) and ``~/.keras/models``."""
    dirs = []
    if os.environ.get("JAXCNN_WEIGHTS_DIR"):
        dirs.append(os.environ["JAXCNN_WEIGHTS_DIR"])
    for folder in (_keras_cache_dir(), os.path.join(os.path.expanduser("~"), ".keras", "models")):
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def download(url: str, dest: str, progress: bool = True) -> str:
    """Fetch ``url`` to the file ``dest`` atomically (a temporary file in the same folder,
    renamed when complete and checked to be HDF5), with a tqdm progress bar.

    Returns ``dest``. Raises ``OSError`` (``urllib.error.URLError`` included) on failure,
    leaving nothing behind.
    """
    import h5py
    from tqdm.auto import tqdm

    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                      desc=os.path.basename(dest)) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        if not h5py.is_hdf5(tmp):
            raise OSError(f"the file downloaded from {url} is not HDF5")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dest


def default_path(name: str) -> str:
    """The Keras Applications weight file of ``name`` ("mobilenet_v2" or "resnet50").

    Looks in :func:`search_dirs` and, when the file is in none of them, downloads it from the
    Keras URL into Keras' cache folder (``~/.keras/models``).

    Raises:
      FileNotFoundError: not found and the download failed (the message lists the folders
        searched, the URL, and what to do offline).
    """
    filename, url = KERAS_FILES[name]
    dirs = search_dirs()
    for folder in dirs:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    dest = os.path.join(_keras_cache_dir(), filename)
    try:
        return download(url, dest)
    except Exception as e:  # no network, HTTP error, disk full, not HDF5, ...
        searched = ", ".join(repr(os.path.join(d, filename)) for d in dirs)
        raise FileNotFoundError(
            f"no ImageNet weights for {name!r}: looked for {searched}, and downloading {url} "
            f"failed ({type(e).__name__}: {e}). Fetch that file on a machine with internet and "
            f"either put it in one of those folders, set JAXCNN_WEIGHTS_DIR to the folder "
            f"holding it, or pass jaxcnn.pretrained.load({name!r}, path='/path/to/{filename}')."
        ) from e


# --- names ----------------------------------------------------------------------------------


def _leaf_name(collection: str, is_bn: bool, leaf: str) -> str | None:
    """Keras weight name of a conv/dense (``kernel``, ``bias``) or BatchNorm leaf, or None."""
    if collection == "params" and leaf in ("kernel", "bias") and not is_bn:
        return leaf
    if is_bn and leaf in _BN_WEIGHTS:
        if collection == ("batch_stats" if leaf in ("mean", "var") else "params"):
            return _BN_WEIGHTS[leaf]
    return None


def _unknown(collection: str, path: tuple[str, ...]) -> ValueError:
    return ValueError(f"no Keras name for Flax leaf {collection}/{'/'.join(path)}")


def mobilenet_v2_keras_name(collection: str, path: tuple[str, ...]) -> str:
    """The Keras key of a ``MobileNetV2`` leaf: ``("block3", "expand", "bn", "var")`` in
    ``batch_stats`` -> ``"block_3_expand_BN/moving_variance"``.

    Raises:
      ValueError: a leaf this map does not know.
    """
    mods, leaf = path[:-1], path[-1]
    layer, is_bn = None, mods[-1:] == ("bn",)
    if mods == ("head",):
        layer = "predictions"
    elif len(mods) == 2 and mods[0] in ("stem", "head_conv") and mods[1] in ("conv", "bn"):
        layer = {
            ("stem", "conv"): "Conv1",
            ("stem", "bn"): "bn_Conv1",
            ("head_conv", "conv"): "Conv_1",
            ("head_conv", "bn"): "Conv_1_bn",
        }[mods]
    elif len(mods) == 3 and mods[1] in ("expand", "depthwise", "project"):
        m = re.fullmatch(r"block(\d+)", mods[0])
        if m and mods[2] in ("conv", "bn"):
            i = int(m.group(1))
            prefix = f"block_{i}_" if i else "expanded_conv_"
            layer = prefix + mods[1] + ("_BN" if is_bn else "")
    weight = _leaf_name(collection, is_bn, leaf) if layer else None
    if weight is None:
        raise _unknown(collection, path)
    return f"{layer}/{weight}"


def resnet50_keras_name(collection: str, path: tuple[str, ...]) -> str:
    """The Keras key of a ``resnet50(keras_compat=True)`` leaf: ``("stage2_block1",
    "proj_bn", "mean")`` in ``batch_stats`` -> ``"conv3_block1_0_bn/moving_mean"``.

    Raises:
      ValueError: a leaf this map does not know.
    """
    mods, leaf = path[:-1], path[-1]
    layer, is_bn = None, False
    if mods == ("head",):
        layer = "predictions"
    elif mods in (("stem_conv",), ("stem_bn",)):
        layer, is_bn = ("conv1_conv", False) if mods[0] == "stem_conv" else ("conv1_bn", True)
    elif len(mods) == 2:
        block = re.fullmatch(r"stage(\d+)_block(\d+)", mods[0])
        part = re.fullmatch(r"(conv|bn)([123])|proj_(conv|bn)", mods[1])
        if block and part:
            kind = part.group(1) or part.group(3)
            index = part.group(2) or "0"
            stage, b = int(block.group(1)), int(block.group(2))
            layer, is_bn = f"conv{stage + 1}_block{b}_{index}_{kind}", kind == "bn"
    weight = _leaf_name(collection, is_bn, leaf) if layer else None
    if weight is None:
        raise _unknown(collection, path)
    return f"{layer}/{weight}"


def to_flax_array(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """One Keras array in the Flax layout of the leaf at ``path``, as float32.

    DepthwiseConv2D kernels (kh, kw, C, 1) -> (kh, kw, 1, C) (the leaf sits under a
    ``depthwise`` module); everything else is already in Flax's layout.
    """
    value = np.asarray(value, dtype=np.float32)
    if path[-1] == "kernel" and "depthwise" in path and value.ndim == 4:
        value = value.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(value)


# --- older MobileNetV2 file names -----------------------------------------------------------

_MOBL = re.compile(r"mobl(\d+)_conv_(\d+)_(expand|depthwise|project)")
_MOBL_BN = re.compile(r"bn(\d+)_conv_(\d+)_bn_(expand|depthwise|project)")


def _mobilenet_v2_layer(layer: str) -> str:
    if layer == "Logits":
        return "predictions"
    for pattern, suffix in ((_MOBL, ""), (_MOBL_BN, "_BN")):
        m = pattern.fullmatch(layer)
        if m and m.group(1) == m.group(2):
            i = int(m.group(1))
            return (f"block_{i}_" if i else "expanded_conv_") + m.group(3) + suffix
    return layer


def _rename(
    state: Mapping[str, np.ndarray],
    layer_fn: Callable[[str], str],
    weight_fn: Callable[[str, str], str],
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    clashes = []
    for key, value in state.items():
        layer, weight = key.rsplit("/", 1)
        layer = layer_fn(layer)
        new = f"{layer}/{weight_fn(layer, weight)}"
        if new in out:
            clashes.append(f"{origin[new]} and {key} -> {new}")
            continue
        out[new], origin[new] = value, key
    if clashes:
        raise ValueError(
            "two weights of the file map to the same Keras name:\n  " + "\n  ".join(clashes)
        )
    return out


def canonical_mobilenet_v2_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename the known older MobileNetV2 layer and weight names to Keras 3's (see the module
    docstring); other keys are kept as they are, in the same order.

    Raises:
      ValueError: two entries would get the same name.
    """
    return _rename(
        state,
        _mobilenet_v2_layer,
        lambda layer, weight: "kernel" if weight == "depthwise_kernel" else weight,
    )
