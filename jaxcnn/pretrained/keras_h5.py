"""Read Keras weight files in the legacy HDF5 layout (``.h5``) with h5py, no TensorFlow.

The layout (written by Keras 2's ``model.save_weights("w.h5")``, by Keras 3's
``keras.src.legacy.saving.legacy_h5_format``, and used by every Keras Applications ImageNet
file such as ``resnet50_weights_tf_dim_ordering_tf_kernels.h5``)::

    /                       attrs: layer_names = [b"Conv1", b"bn_Conv1", ...] (in model order;
                                   very long lists are split into layer_names0, layer_names1, ...)
    /Conv1                  attrs: weight_names = [b"Conv1/kernel:0"]
    /Conv1/Conv1/kernel:0   dataset (3, 3, 3, 32)
    /bn_Conv1               attrs: weight_names = [b"bn_Conv1/gamma:0", b"bn_Conv1/beta:0",
                                   b"bn_Conv1/moving_mean:0", b"bn_Conv1/moving_variance:0"]
    ...

Each weight name is a dataset path inside its layer's group (Keras 2 appends ``:0``; Keras 3
writes ``Conv1/kernel``). A full-model file (``model.save("m.h5")``) holds the same tree under
a ``model_weights`` group, next to the model config and optimizer state.

``read_keras_h5`` flattens this into ``{"<layer>/<weight>": array}`` where ``<weight>`` is the
last component of the weight name without the ``:0`` suffix (``"Conv1/kernel"``,
``"bn_Conv1/moving_mean"``), in file order. Layers without weights (activations, pooling,
``Add``, the input) have empty ``weight_names`` and add nothing.

Array layouts are Keras' own: Conv2D kernels (kh, kw, C_in, C_out) = Flax's HWIO; Dense kernels
(in, out) as in Flax; DepthwiseConv2D kernels (kh, kw, C, 1), which Flax's grouped conv wants
as (kh, kw, 1, C) (``jaxcnn.pretrained.keras_applications.to_flax_array`` converts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np

__all__ = ["read_keras_h5", "weight_key"]


def _import_h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise ImportError(
            "reading Keras .h5 weight files needs h5py: `pip install h5py`"
        ) from None
    return h5py


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _string_list_attr(group, name: str) -> list[str] | None:
    """An attribute holding a list of strings, also when Keras split it into name0, name1, ...
    (HDF5 caps an object header at 64 KiB). None when absent."""
    attrs = group.attrs
    if name in attrs:
        return [_text(v) for v in np.atleast_1d(attrs[name])]
    if f"{name}0" not in attrs:
        return None
    out: list[str] = []
    i = 0
    while f"{name}{i}" in attrs:
        out += [_text(v) for v in np.atleast_1d(attrs[f"{name}{i}"])]
        i += 1
    return out


def weight_key(layer: str, weight_name: str) -> str:
    """``"<layer>/<short weight name>"``: ``weight_key("Conv1", "Conv1/kernel:0") ==
    "Conv1/kernel"`` (the prefix of the stored name is ignored: Keras 2 files may carry another
    scope there, e.g. ``"Conv1_1/kernel:0"`` after a model was built twice)."""
    short = re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])
    return f"{layer}/{short}"


def _weights_root(f, path: str):
    """The group holding ``layer_names``: the file root or a full model's ``model_weights``."""
    if _string_list_attr(f, "layer_names") is not None:
        return f
    if "model_weights" in f and _string_list_attr(f["model_weights"], "layer_names") is not None:
        return f["model_weights"]
    raise ValueError(
        f"{path!r} is an HDF5 file but not Keras weights in the legacy layout: it has no "
        "'layer_names' attribute at its root or in a 'model_weights' group (a Keras 3 "
        "'.weights.h5' or '.keras' file is a different format; re-save with "
        "keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group or model.save('m.h5'))"
    )


def _iter_weights(root, path: str) -> Iterator[tuple[str, str, np.ndarray]]:
    for layer in _string_list_attr(root, "layer_names") or []:
        if layer not in root:
            raise ValueError(
                f"{path!r}: layer {layer!r} is listed in 'layer_names' but has no group in the "
                "file (truncated or hand-edited file?)"
            )
        group = root[layer]
        for name in _string_list_attr(group, "weight_names") or []:
            if name not in group:
                raise ValueError(
                    f"{path!r}: weight {name!r} of layer {layer!r} is listed in 'weight_names' "
                    "but has no dataset in the file"
                )
            yield layer, name, np.asarray(group[name][()])


def read_keras_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of a legacy-layout Keras ``.h5`` file.

    Args:
      path: a weights file (``save_weights``, Keras Applications downloads) or a full-model
        ``.h5`` (weights under ``model_weights``).

    Returns:
      ``{"<layer>/<weight>": np.ndarray}`` in file order, e.g. ``"Conv1/kernel"`` (3, 3, 3, 32)
      or ``"bn_Conv1/moving_variance"`` (32,), arrays in their stored dtype and Keras layout.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: not an HDF5 file, not the legacy Keras layout, a listed layer or weight that
        is missing from the file, or two weights with the same key.
    """
    h5py = _import_h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Keras weight file at {path!r}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path!r} is not an HDF5 file (expected Keras .h5 weights)")
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        root = _weights_root(f, path)
        for layer, name, value in _iter_weights(root, path):
            key = weight_key(layer, name)
            if key in out:
                raise ValueError(
                    f"{path!r}: layer {layer!r} has two weights named {key.split('/')[-1]!r}"
                )
            out[key] = value
    return out
