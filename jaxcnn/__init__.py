"""jaxcnn: convolutional neural networks in JAX, from the convolution sum to transfer learning.

Subpackages (import what you need; nothing heavy is imported here):
  jaxcnn.ops        pure functions on arrays: convolution, pooling, shape formulas, classic filters
  jaxcnn.models     Flax linen modules and a registry: ``jaxcnn.models.create("cnn3")``
  jaxcnn.data       TFDS and image-folder datasets in memory, on-device augmentation, batching
  jaxcnn.train      TrainState, jit-compiled data-parallel steps, optimizers, checkpoints, fit loop
  jaxcnn.evaluate   accuracy, per-class metrics, confusion matrix, confident mistakes
  jaxcnn.export     self-contained model bundles and prediction on uint8 images
  jaxcnn.viz        matplotlib figures

Conventions: arrays are NHWC, kernels HWIO, float32 unless asked otherwise; images are uint8 on
the host and normalised on device.

Importing jaxcnn lets every thread allocate from glibc's main arena, so that ``jaxcnn.train.fit``
can keep XLA:CPU's per-step buffers mapped instead of faulting in fresh pages each step
(``jaxcnn.host_malloc``; ``JAXCNN_MALLOC=default`` opts out). Import jaxcnn before running JAX
computations for it to reach JAX's threads.
"""

from jaxcnn import host_malloc as _host_malloc

__version__ = "0.1.0"

_host_malloc.share_main_arena()
