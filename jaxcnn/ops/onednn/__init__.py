"""Optional oneDNN convolutions for the CPU (``pip install "jaxcnn[onednn]"``).

  conv2d_onednn, pure_jax            jaxcnn.ops.onednn.conv
  available, unavailable_reason      jaxcnn.ops.onednn.build

The kernels are C++ (``conv.cc``) compiled on first use into a cache folder; without oneDNN or
a compiler every caller falls back to pure JAX (:func:`jaxcnn.ops.fast_conv.conv2d_fast`).
"""

from jaxcnn.ops.onednn.build import OnednnUnavailable, available, unavailable_reason
from jaxcnn.ops.onednn.conv import conv2d_onednn, pure_jax

__all__ = ["OnednnUnavailable", "available", "conv2d_onednn", "pure_jax", "unavailable_reason"]
