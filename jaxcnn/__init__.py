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

Importing jaxcnn changes nothing outside it. Two process-wide choices are left to programs:
the kernels (``jaxcnn.ops.backend``: ``JAXCNN_BACKEND`` or ``backend.use(...)``) and glibc's
allocator settings for training on a CPU (``jaxcnn.host_malloc.share_main_arena()`` at the
start of a program, as the experiments do).
"""

__version__ = "0.1.0"
