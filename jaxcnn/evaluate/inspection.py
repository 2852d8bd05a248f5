"""Looking inside a trained model: its first convolution's filters and every convolution's
output for a few images."""

from __future__ import annotations

import re

import numpy as np

from jaxcnn.evaluate.prediction import _stats_arrays, normalize_on_device

__all__ = ["conv_activations", "first_conv_kernel"]


def first_conv_kernel(variables) -> np.ndarray:
    """The first convolution's kernel ``(kh, kw, C_in, C_out)`` of a model.

    The first layer is the one that reads the image, so among all 4-D ``kernel`` leaves the one
    with the fewest input channels wins (image channels, 1 or 3, are fewer than any hidden
    width); ties are broken by the layer path in natural order (``Conv_2`` before ``Conv_10``).
    Dict order is not used: jit and checkpoint restores return keys sorted.

    Args:
      variables: ``{"params": ...}`` (``state.variables`` of a ``TrainState``) or the params
        tree itself.

    Raises:
      ValueError: the model has no 4-D kernel (e.g. an MLP).
    """
    tree = variables.get("params", variables) if hasattr(variables, "get") else variables
    found: list[tuple[str, object]] = []

    def walk(node, prefix):
        if hasattr(node, "items"):
            for key, value in node.items():
                path = f"{prefix}/{key}"
                if key == "kernel" and len(getattr(value, "shape", ())) == 4:
                    found.append((path, value))
                else:
                    walk(value, path)

    walk(tree, "")
    if not found:
        raise ValueError(
            "no 4-D convolution kernel found in the params; first-layer filters exist only for "
            "convolutional models (e.g. cnn3, not mlp)"
        )

    def natural(path: str):
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]

    _, kernel = min(found, key=lambda item: (item[1].shape[2], natural(item[0])))
    return np.asarray(kernel)


def conv_activations(model, variables, images_uint8, *, mean, std) -> dict[str, np.ndarray]:
    """Outputs of every convolution layer (``nn.Conv``, ``layers.Conv``, ``layers.DepthwiseConv``)
    of ``model`` for a few images (inference mode).

    Args:
      model: a Flax linen module following the jaxcnn convention.
      variables: its variables.
      images_uint8: uint8 ``(N, H, W, C)`` (keep N small: all activations are returned).
      mean, std: normalisation on the [0, 1] scale.

    Returns:
      ``{"Conv_0": (N, H', W', C'), ...}`` float32 numpy, in the order the layers ran; the
      key is the module path joined with ``/``.
    """
    import flax.linen as nn

    from jaxcnn.models.layers import Conv, DepthwiseConv

    conv_types = (nn.Conv, Conv, DepthwiseConv)  # flax's and jaxcnn's fast CPU layers
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"images_uint8 must be uint8 (N, H, W, C), got {images.dtype} {images.shape}"
        )
    x = normalize_on_device(images, *_stats_arrays(mean, std))
    _, state = model.apply(
        variables,
        x,
        train=False,
        capture_intermediates=lambda mdl, method: isinstance(mdl, conv_types)
        and method == "__call__",
        mutable=["intermediates"],
    )
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if key == "__call__":
                out[prefix] = np.asarray(value[0], np.float32)
            elif hasattr(value, "items"):
                walk(value, f"{prefix}/{key}" if prefix else key)

    walk(state.get("intermediates", {}), "")
    if not out:
        raise ValueError(f"{type(model).__name__} has no convolution layer to capture")
    return out
