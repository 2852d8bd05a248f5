"""Optional native CPU kernels (``pip install "jaxcnn[onednn]"``): oneDNN convolutions and
BatchNorm (+ ReLU, + 2x2 max pool) kernels.

  conv2d_onednn, pure_jax, bf16_products,
  native_bf16                                   jaxcnn.ops.onednn.conv
  batch_norm_train_native,
  batch_norm_relu_pool_train_native             jaxcnn.ops.onednn.batchnorm
  available, unavailable_reason                 jaxcnn.ops.onednn.build

The kernels are C++ (``conv.cc``, ``batchnorm.cc``) compiled on first use into a cache folder;
without oneDNN or a compiler every caller falls back to pure JAX
(:func:`jaxcnn.ops.fast_conv.conv2d_fast`, :mod:`jaxcnn.ops.batchnorm`).
"""

from jaxcnn.ops.onednn.batchnorm import (
    batch_norm_relu_pool_train_native,
    batch_norm_train_native,
)
from jaxcnn.ops.onednn.build import OnednnUnavailable, available, unavailable_reason
from jaxcnn.ops.onednn.conv import bf16_products, conv2d_onednn, native_bf16, pure_jax

__all__ = ["OnednnUnavailable", "available", "batch_norm_relu_pool_train_native",
           "batch_norm_train_native", "bf16_products", "conv2d_onednn", "native_bf16",
           "pure_jax", "unavailable_reason"]
