"""Pure functions on arrays (no Flax): convolution, pooling, shape formulas, classic filters.

Arrays are NHWC-style ``(N, *spatial, C)`` with 1, 2 or 3 spatial axes; kernels are HWIO-style
``(*window, C_in // groups, C_out)``. Bad arguments raise ``ValueError`` before any tracing.
"""

from jaxcnn.ops.conv import conv, conv_reference, true_convolution

__all__ = ["conv", "conv_reference", "true_convolution"]
