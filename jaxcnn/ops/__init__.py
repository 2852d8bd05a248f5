"""Pure functions on arrays (no Flax): convolution, pooling, shape formulas, classic filters.

Arrays are NHWC-style ``(N, *spatial, C)`` with 1, 2 or 3 spatial axes; kernels are HWIO-style
``(*window, C_in // groups, C_out)``. Bad arguments raise ``ValueError`` before any tracing.

  conv, conv_reference, true_convolution          jaxcnn.ops.conv
  max_pool, avg_pool, min_pool, global_*_pool     jaxcnn.ops.pool
  output_size, same_padding, receptive_field,
  conv_params, dense_params                       jaxcnn.ops.shapes
  SOBEL_X, ..., CLASSIC_FILTERS, as_kernel        jaxcnn.ops.filters
"""

from jaxcnn.ops import filters, shapes
from jaxcnn.ops.conv import conv, conv_reference, true_convolution
from jaxcnn.ops.filters import *  # noqa: F403 (the names of filters.__all__)
from jaxcnn.ops.pool import avg_pool, global_avg_pool, global_max_pool, max_pool, min_pool
from jaxcnn.ops.shapes import *  # noqa: F403 (the names of shapes.__all__)

__all__ = [
    "conv",
    "conv_reference",
    "true_convolution",
    "max_pool",
    "avg_pool",
    "min_pool",
    "global_avg_pool",
    "global_max_pool",
    *shapes.__all__,
    "filters",
    *filters.__all__,
]
