"""Argument validation shared by the ops.

Every check works on static shapes (``x.shape`` of a concrete array or of a tracer), so the
errors are raised as plain ``ValueError`` before any XLA computation is built, also under jit.
Each message names the argument, the bad value and the form that was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxcnn.ops._ints import int_tuple, nonnegative_int, positive_int, shape_of
from jaxcnn.ops.shapes import same_padding

PADDING_STRINGS = ("SAME", "VALID")

# lax dimension numbers for NHWC-style inputs and HWIO-style kernels, by spatial rank.
DIMENSION_NUMBERS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


def normalize_padding(padding, n: int, name: str = "padding"):
    """Check ``padding`` for ``n`` spatial axes.

    Returns "SAME" or "VALID" (upper case), or a tuple of ``n`` (lo, hi) int pairs.
    Accepted: "SAME" | "VALID" (any case) | int (symmetric on every axis) | sequence of ``n``
    ints (symmetric per axis) | sequence of ``n`` (lo, hi) pairs.
    """
    if isinstance(padding, str):
        up = padding.upper()
        if up not in PADDING_STRINGS:
            raise ValueError(
                f"{name} string must be one of {PADDING_STRINGS} (any case); got {padding!r}"
            )
        return up
    form = f"'SAME', 'VALID', an int, a sequence of {n} ints, or a sequence of {n} (lo, hi) pairs"
    if isinstance(padding, Sequence):
        if len(padding) != n:
            raise ValueError(
                f"{name} must have one entry per spatial axis ({n}); got {padding!r} of length "
                f"{len(padding)}; expected {form}"
            )
        pairs = []
        for i, p in enumerate(padding):
            if isinstance(p, Sequence) and not isinstance(p, str):
                if len(p) != 2:
                    raise ValueError(
                        f"{name}[{i}] must be a (lo, hi) pair of 2 ints; got {p!r} of length "
                        f"{len(p)}"
                    )
                pairs.append(
                    (
                        nonnegative_int(p[0], f"{name}[{i}][0] (lo)"),
                        nonnegative_int(p[1], f"{name}[{i}][1] (hi)"),
                    )
                )
            else:
                try:
                    v = nonnegative_int(p, f"{name}[{i}]")
                except ValueError as err:
                    raise ValueError(f"{err}; expected {form}") from None
                pairs.append((v, v))
        return tuple(pairs)
    try:
        v = nonnegative_int(padding, name)
    except ValueError as err:
        raise ValueError(f"{err}; expected {form}") from None
    return ((v, v),) * n


def resolve_padding(padding, spatial, window, stride, dilation):
    """Explicit (lo, hi) pairs for an already normalized ``padding``."""
    if padding == "VALID":
        return ((0, 0),) * len(spatial)
    if padding == "SAME":
        return tuple(
            same_padding(k, d, stride=s, size=n)
            for n, k, s, d in zip(spatial, window, stride, dilation, strict=True)
        )
    return padding


def check_window_fits(spatial, window, dilation, pads, what: str, arg: str, hint: str = "") -> None:
    """The (dilated) window must fit inside the padded input on every axis; ``hint`` is
    appended to the error."""
    for i, (n, k, d, (lo, hi)) in enumerate(zip(spatial, window, dilation, pads, strict=True)):
        extent = d * (k - 1) + 1
        if extent > n + lo + hi:
            dil = f" dilated by {d} to {extent}" if d > 1 else ""
            raise ValueError(
                f"{arg}: {what} size {k}{dil} on spatial axis {i} is larger than the padded input "
                f"({n} + {lo} + {hi} = {n + lo + hi}); use a smaller {what}, more padding or "
                f"'SAME' padding{hint}"
            )


def _nhwc_hint(x_shape, expected_c: int) -> str:
    """A hint when the channel count sits right after the batch axis (NCHW-style input)."""
    if len(x_shape) >= 3 and x_shape[1] == expected_c and x_shape[-1] != expected_c:
        r = len(x_shape)
        perm = ", ".join(str(i) for i in (0, *range(2, r), 1))
        names = {3: ("NCW", "NWC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}[r]
        return (
            f"; input looks {names[0]}; jaxcnn expects {names[1]}: transpose with "
            f"x.transpose({perm})"
        )
    return ""


_SPATIAL = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _oihw_hint(x_shape, k_shape, groups: int) -> str:
    """A hint when the kernel looks like PyTorch's (out, in, *window) layout: read that way its
    in-channels fit x, its out-channels the groups and its window is square (as nearly all
    PyTorch kernels are). The caller asks only after the HWIO reading failed."""
    r = len(k_shape)
    if r not in (3, 4, 5) or k_shape[0] % groups or len(set(k_shape[2:])) != 1:
        return ""
    nd = r - 2
    torch, ours = "OI" + "".join(_SPATIAL[nd]), "".join(_SPATIAL[nd]) + "IO"
    order = ", ".join(("out", "in", *(f"k{a.lower()}" for a in _SPATIAL[nd])))
    perm = ", ".join(str(i) for i in (*range(2, r), 1, 0))
    if k_shape[1] * groups == x_shape[-1]:
        return (
            f"; kernel {k_shape} looks like PyTorch's {torch} ({order}); jaxcnn expects "
            f"{ours}: use kernel.transpose({perm})"
        )
    if len(x_shape) == r and x_shape[1] == k_shape[1] * groups:
        xperm = ", ".join(str(i) for i in (0, *range(2, r), 1))
        x_torch, x_ours = "NC" + "".join(_SPATIAL[nd]), "N" + "".join(_SPATIAL[nd]) + "C"
        return (
            f"; x and kernel look like PyTorch's {x_torch} and {torch} ({order}); jaxcnn "
            f"expects {x_ours} and {ours}: use x.transpose({xperm}) and "
            f"kernel.transpose({perm})"
        )
    return ""


def _layout_hint(x_shape, k_shape, groups: int) -> str:
    """The NCHW-input hint, else the OIHW-kernel hint, else nothing."""
    return _nhwc_hint(x_shape, k_shape[-2] * groups) or _oihw_hint(x_shape, k_shape, groups)


def _unbatched_hint(x_shape, rank: int) -> str:
    """A hint when x has one axis fewer than the ``rank`` expected: an unbatched input."""
    if len(x_shape) + 1 != rank:
        return ""
    names = {4: "(H, W, C) image", 3: "(L, C) signal", 5: "(D, H, W, C) volume"}.get(rank)
    return f"; x looks like one {names or 'example'} without the batch axis: use x[None]"


def check_input_rank(x_shape, name: str = "x") -> int:
    """``x`` must be (N, *spatial, C) with 1 to 3 spatial axes; returns the spatial rank."""
    if len(x_shape) not in (3, 4, 5):
        raise ValueError(
            f"{name} must have shape (N, *spatial, C) with 1, 2 or 3 spatial axes (rank 3, 4 or "
            f"5), e.g. (N, H, W, C); got shape {x_shape} (rank {len(x_shape)})"
        )
    return len(x_shape) - 2


def check_conv_args(x, kernel, stride, padding, dilation, groups):
    """Validate conv arguments on static shapes.

    x: (N, *spatial, C_in); kernel: (*window, C_in // groups, C_out).
    Returns (stride, pads, dilation, groups) with ``pads`` explicit (lo, hi) pairs.
    """
    x_shape = shape_of(x, "x")
    k_shape = shape_of(kernel, "kernel")
    nd = check_input_rank(x_shape, "x")
    if len(k_shape) != len(x_shape):
        raise ValueError(
            f"kernel must have rank {len(x_shape)} to match x of shape {x_shape}: shape "
            f"(*window, C_in // groups, C_out) with {nd} window axes (HWIO-style); got kernel "
            f"shape {k_shape} (rank {len(k_shape)}){_unbatched_hint(x_shape, len(k_shape))}"
        )
    groups = positive_int(groups, "groups")
    stride = int_tuple(stride, nd, "stride")
    dilation = int_tuple(dilation, nd, "dilation")
    padding = normalize_padding(padding, nd, "padding")
    c_in, c_out, k_in = x_shape[-1], k_shape[-1], k_shape[-2]
    if c_in % groups:
        raise ValueError(
            f"groups={groups} must divide the input channels C_in={c_in} of x with shape "
            f"{x_shape}{_nhwc_hint(x_shape, k_in * groups)}"
        )
    if c_out % groups:
        raise ValueError(
            f"groups={groups} must divide the output channels C_out={c_out} (kernel.shape[-1] of "
            f"kernel with shape {k_shape}){_oihw_hint(x_shape, k_shape, groups)}"
        )
    if c_in != k_in * groups:
        raise ValueError(
            f"channel mismatch: x has C_in={c_in} channels (last axis of shape {x_shape}) but "
            f"kernel expects kernel.shape[-2] * groups = {k_in} * {groups} = {k_in * groups} "
            f"(kernel shape {k_shape}){_layout_hint(x_shape, k_shape, groups)}"
        )
    for i, k in enumerate(k_shape[:-2]):
        if k < 1:
            raise ValueError(f"kernel window sizes must be >= 1; got {k} on axis {i} ({k_shape})")
    spatial, window = x_shape[1:-1], k_shape[:-2]
    pads = resolve_padding(padding, spatial, window, stride, dilation)
    check_window_fits(
        spatial,
        window,
        dilation,
        pads,
        "kernel window",
        "kernel",
        _oihw_hint(x_shape, k_shape, groups),
    )
    return stride, pads, dilation, groups


def check_pool_args(x, window, stride, padding):
    """Validate pooling arguments on static shapes.

    x: (N, *spatial, C). Returns (window, stride, pads) with explicit (lo, hi) pairs;
    ``stride=None`` means stride = window.

    A rank-3 x is a batch of 1-D signals (N, L, C), but one (H, W, C) image has the same rank
    and would silently be pooled along W only, its rows taken for the batch. So with a rank-3
    x the window must be a 1-tuple ``(k,)``: a plain int is refused unless N == 1 (a one-row
    image cannot be what is meant), and a 2-tuple gets the hint to add the batch axis.
    """
    x_shape = shape_of(x, "x")
    nd = check_input_rank(x_shape, "x")
    if nd == 1:
        if isinstance(window, Sequence) and not isinstance(window, str):
            if len(window) == 2:
                raise ValueError(
                    f"window {window!r} has 2 entries but x of shape {x_shape} has one spatial "
                    f"axis (N, L, C){_unbatched_hint(x_shape, 4)}"
                )
        elif x_shape[0] > 1:
            raise ValueError(
                f"x of shape {x_shape} with the int window {window!r} is ambiguous: a batch of "
                f"{x_shape[0]} 1-D signals (N, L, C), or one (H, W, C) image without its batch "
                f"axis? Pool the signals with window=({window!r},), or the image with x[None]"
            )
    window = int_tuple(window, nd, "window")
    stride = window if stride is None else int_tuple(stride, nd, "stride")
    padding = normalize_padding(padding, nd, "padding")
    ones = (1,) * nd
    pads = resolve_padding(padding, x_shape[1:-1], window, stride, ones)
    check_window_fits(x_shape[1:-1], window, ones, pads, "pooling window", "window")
    return window, stride, pads


def prod(xs) -> int:
    return math.prod(xs)

# The precisions of a layer's products (``layers.Conv(precision=...)``, ``conv2d_onednn``) and
# of a run's (``FitConfig.matmul_precision``): None (JAX's matmul precision where the model is
# traced), "float32", or "bfloat16" (operands rounded to bfloat16, float32 accumulation).
PRECISIONS = (None, "float32", "bfloat16")


def check_precision(precision, where: str):
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError naming ``where``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where} must be None, 'float32' or 'bfloat16'; got {precision!r}")
    return precision
