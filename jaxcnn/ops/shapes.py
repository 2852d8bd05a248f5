"""The shape arithmetic of CNNs, in plain Python ints: output sizes, "same" padding, receptive
fields and parameter counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from jaxcnn.ops._ints import nonnegative_int, positive_int

__all__ = [
    "output_size",
    "same_padding",
    "receptive_field",
    "RFLayer",
    "conv_params",
    "dense_params",
]


def same_padding(kernel, dilation=1, *, stride=1, size=None) -> tuple[int, int]:
    """TensorFlow / lax "SAME" padding ``(lo, hi)`` of one axis: the only copy of the rule.

    "SAME" asks for ``out = ceil(size / stride)`` outputs. The dilated kernel covers
    ``extent = dilation * (kernel - 1) + 1`` input positions, so the last window ends at
    ``(out - 1) * stride + extent`` and the padding is::

        total = max((out - 1) * stride + extent - size, 0)
        lo, hi = total // 2, total - total // 2          (an odd extra zero goes on the high side)

    At stride 1 that is ``dilation * (kernel - 1)`` whatever the size, so ``size`` may be left
    out: ``same_padding(5) == (2, 2)``, ``same_padding(4) == (1, 2)``. With a stride the
    padding depends on the size, and is asymmetric where PyTorch's symmetric padding is not:
    ``same_padding(3, stride=2, size=224) == (0, 1)``, ``same_padding(5, stride=2, size=224)
    == (1, 2)``, ``same_padding(3, stride=2, size=7) == (1, 1)``.

    Args:
      kernel: window length (>= 1).
      dilation: spacing of the kernel taps (>= 1).
      stride: step (>= 1).
      size: input length (>= 1); required when ``stride > 1``.
    """
    kernel = positive_int(kernel, "kernel")
    dilation = positive_int(dilation, "dilation")
    stride = positive_int(stride, "stride")
    if size is None:
        if stride != 1:
            raise ValueError(
                f"same_padding with stride={stride} depends on the input length: pass size="
            )
        size = 1  # any length gives the same padding at stride 1
    size = positive_int(size, "size")
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(n: int, kernel: int, stride: int, dilation: int, padding) -> tuple[int, int]:
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return 0, 0
        if mode == "same":
            return same_padding(kernel, dilation, stride=stride, size=n)
        raise ValueError(f"padding string must be 'same' or 'valid' (any case); got {padding!r}")
    if isinstance(padding, Sequence):
        if len(padding) != 2:
            raise ValueError(
                f"padding must be an int (each side), 'same', 'valid' or a (lo, hi) pair; got "
                f"{padding!r} of length {len(padding)}"
            )
        return nonnegative_int(padding[0], "padding[0] (lo)"), nonnegative_int(
            padding[1], "padding[1] (hi)"
        )
    p = nonnegative_int(padding, "padding")
    return p, p


def output_size(n, kernel, stride=1, padding=0, dilation=1) -> int:
    """Output length of a convolution or pooling along one axis.

    ``floor((n + lo + hi - dilation * (kernel - 1) - 1) / stride) + 1``

    Args:
      n: input length (>= 1).
      kernel: window length (>= 1).
      stride: step (>= 1).
      padding: int (zeros on each side, so 2 * padding in all), "same" (output
        ceil(n / stride)), "valid" (no padding) or a (lo, hi) pair.
      dilation: spacing of the kernel taps (>= 1).

    Examples: ``output_size(32, 5, 1, 2) == 32``, ``output_size(28, 3, 2) == 13``,
    ``output_size(5, 3, 2) == 2``.
    """
    n = positive_int(n, "n")
    kernel = positive_int(kernel, "kernel")
    stride = positive_int(stride, "stride")
    dilation = positive_int(dilation, "dilation")
    lo, hi = _pads(n, kernel, stride, dilation, padding)
    extent = dilation * (kernel - 1) + 1
    if extent > n + lo + hi:
        raise ValueError(
            f"kernel={kernel} (dilated extent {extent}) is larger than the padded input "
            f"n + lo + hi = {n} + {lo} + {hi} = {n + lo + hi}"
        )
    return out_size(n, kernel, stride, dilation, lo, hi)


def out_size(n: int, k: int, s: int, d: int, lo: int, hi: int) -> int:
    """:func:`output_size` without the checks (for the ops, whose arguments are checked):
    ``(n + lo + hi - d * (k - 1) - 1) // s + 1``."""
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


class RFLayer(NamedTuple):
    """Receptive-field bookkeeping after one layer.

    size: receptive field of one output unit, in input pixels (per axis).
    jump: distance in input pixels between neighbouring output units (product of strides).
    start: input coordinate of the centre of the first output unit's receptive field
      (can be a half-integer for even kernels; negative when padding reaches outside).
    """

    kernel: int
    stride: int
    dilation: int
    padding: int
    size: int
    jump: int
    start: float


def _layer_spec(layer, i: int) -> tuple[int, int, int, int]:
    name = f"layers[{i}]"
    if isinstance(layer, Mapping):
        unknown = set(layer) - {"kernel", "stride", "dilation", "padding"}
        if "kernel" not in layer or unknown:
            raise ValueError(
                f"{name} as a dict needs 'kernel' and may have 'stride', 'dilation', 'padding'; "
                f"got keys {sorted(layer)}"
            )
        k, s = layer["kernel"], layer.get("stride", 1)
        d, p = layer.get("dilation", 1), layer.get("padding", 0)
    elif isinstance(layer, Sequence) and not isinstance(layer, str) and 2 <= len(layer) <= 4:
        k, s, d, p = (*layer, 1, 0)[:4] if len(layer) == 2 else (*layer, 0)[:4]
    else:
        raise ValueError(
            f"{name} must be (kernel, stride), (kernel, stride, dilation), "
            f"(kernel, stride, dilation, padding) or a dict with those keys; got {layer!r}"
        )
    return (
        positive_int(k, f"{name} kernel"),
        positive_int(s, f"{name} stride"),
        positive_int(d, f"{name} dilation"),
        nonnegative_int(p, f"{name} padding"),
    )


def receptive_field(layers) -> list[RFLayer]:
    """Receptive field growth through a stack of conv / pool layers (one spatial axis).

    Each layer is ``(kernel, stride)``, ``(kernel, stride, dilation)``,
    ``(kernel, stride, dilation, padding)`` or a dict with those keys (padding, symmetric per
    side, only moves ``start``). With the dilated kernel ``k' = dilation * (kernel - 1) + 1``:

      size_out  = size_in + (k' - 1) * jump_in
      jump_out  = jump_in * stride
      start_out = start_in + ((k' - 1) / 2 - padding) * jump_in

    starting from the input pixel itself (size 1, jump 1, start 0). Returns one
    :class:`RFLayer` per layer; the final receptive field is ``receptive_field(...)[-1].size``.

    Example: conv3 -> pool2 -> conv3 -> pool2 gives sizes 3, 4, 8, 10.
    """
    if isinstance(layers, (str, Mapping)) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(
            f"layers must be a non-empty sequence of (kernel, stride[, dilation[, padding]]) "
            f"tuples or dicts; got {layers!r}"
        )
    size, jump, start = 1, 1, 0.0
    result = []
    for i, layer in enumerate(layers):
        k, s, d, p = _layer_spec(layer, i)
        extent = d * (k - 1) + 1
        start = start + ((extent - 1) / 2 - p) * jump
        size = size + (extent - 1) * jump
        jump = jump * s
        result.append(RFLayer(k, s, d, p, size, jump, start))
    return result


def conv_params(kh, kw, c_in, c_out, bias=True, groups=1) -> int:
    """Trainable parameters of a 2D conv layer: ``kh * kw * (c_in / groups) * c_out`` weights
    plus ``c_out`` biases. Independent of the image size: 50 3x3 filters on a 128x128x3 image
    have 3 * 3 * 3 * 50 + 50 = 1,400 parameters."""
    kh, kw = positive_int(kh, "kh"), positive_int(kw, "kw")
    c_in, c_out = positive_int(c_in, "c_in"), positive_int(c_out, "c_out")
    groups = positive_int(groups, "groups")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    return kh * kw * (c_in // groups) * c_out + (c_out if bias else 0)


def dense_params(n_in, n_out, bias=True) -> int:
    """Trainable parameters of a dense layer: ``n_in * n_out`` weights plus ``n_out`` biases
    (784 -> 128: 100,480)."""
    n_in, n_out = positive_int(n_in, "n_in"), positive_int(n_out, "n_out")
    return n_in * n_out + (n_out if bias else 0)
