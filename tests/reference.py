"""Independent float64 numpy references for the tests, written plainly (loops over output
positions) and sharing no code with ``jaxcnn``.

Shapes follow jaxcnn: x (N, *spatial, C), kernel (*window, C_in // groups, C_out).
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def explicit_pads(padding, spatial, window, stride, dilation):
    """(lo, hi) pairs for 'SAME' / 'VALID' / int / ints / pairs.

    'SAME' (TensorFlow): output ceil(n / s); total padding (out - 1) * s + extent - n, with the
    odd one on the high side."""
    nd = len(spatial)
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return [(0, 0)] * nd
        pads = []
        for n, k, s, d in zip(spatial, window, stride, dilation, strict=True):
            extent = (k - 1) * d + 1
            out = math.ceil(n / s)
            total = max((out - 1) * s + extent - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _per_axis(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def conv_nd(x, kernel, stride=1, padding="VALID", dilation=1, groups=1):
    """Cross-correlation in float64:
    out[n, p, o] = sum_{t, c} xpad[n, p*s + t*d, g(o)*Cg + c] * kernel[t, c, o]."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    nd = x.ndim - 2
    stride, dilation = _per_axis(stride, nd), _per_axis(dilation, nd)
    window = kernel.shape[:nd]
    pads = explicit_pads(padding, x.shape[1:-1], window, stride, dilation)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    c_in, c_out = x.shape[-1], kernel.shape[-1]
    cg, og = c_in // groups, c_out // groups
    out_sp = [
        (xp.shape[1 + i] - (window[i] - 1) * dilation[i] - 1) // stride[i] + 1 for i in range(nd)
    ]
    out = np.zeros((x.shape[0], *out_sp, c_out))
    for pos in itertools.product(*(range(m) for m in out_sp)):
        # the (dilated) window under output position `pos`: (N, *window, C_in)
        sl = tuple(
            slice(p * s, p * s + (k - 1) * d + 1, d)
            for p, s, k, d in zip(pos, stride, window, dilation, strict=True)
        )
        patch = xp[(slice(None), *sl, slice(None))]
        for g in range(groups):
            a = patch[..., g * cg : (g + 1) * cg].reshape(x.shape[0], -1)
            b = kernel[..., g * og : (g + 1) * og].reshape(-1, og)
            out[(slice(None), *pos, slice(g * og, (g + 1) * og))] = a @ b
    return out


def conv2d_four_loops(image, kernel):
    """Single-channel 2D 'valid' cross-correlation with four explicit loops (course style)."""
    image = np.asarray(image, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw = kernel.shape
    ho, wo = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    out = np.zeros((ho, wo))
    for i in range(ho):
        for j in range(wo):
            total = 0.0
            for m in range(kh):
                for n in range(kw):
                    total += image[i + m, j + n] * kernel[m, n]
            out[i, j] = total
    return out


def pool_nd(x, kind, window, stride=None, padding="VALID"):
    """Max / avg / min pooling in float64; padded positions are NaN and ignored (so averages
    count only real elements)."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 2
    window = _per_axis(window, nd)
    stride = window if stride is None else _per_axis(stride, nd)
    pads = explicit_pads(padding, x.shape[1:-1], window, stride, (1,) * nd)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=np.nan)
    out_sp = [(xp.shape[1 + i] - window[i]) // stride[i] + 1 for i in range(nd)]
    reducer = {"max": np.nanmax, "avg": np.nanmean, "min": np.nanmin}[kind]
    out = np.zeros((x.shape[0], *out_sp, x.shape[-1]))
    for pos in itertools.product(*(range(m) for m in out_sp)):
        sl = tuple(slice(p * s, p * s + k) for p, s, k in zip(pos, stride, window, strict=True))
        patch = xp[(slice(None), *sl, slice(None))]
        out[(slice(None), *pos, slice(None))] = reducer(
            patch.reshape(x.shape[0], -1, x.shape[-1]), axis=1
        )
    return out
