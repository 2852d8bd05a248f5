"""Evaluation: batched prediction, classification metrics and a look inside a trained model.

  make_forward, run_batched, predict_logits,
  normalize_on_device, softmax                     jaxcnn.evaluate.prediction
  TTA_MODES, tta_logits, tta_views,
  check_tta_mode, describe_tta_modes               jaxcnn.evaluate.tta (test-time augmentation;
                                                   re-exported by prediction)
  accuracy, top_k_accuracy, confusion_matrix,
  per_class_accuracy, precision_recall_f1,
  classification_report, most_confident_mistakes  jaxcnn.evaluate.metrics (scikit-learn)
  balanced_class_weights                           jaxcnn.data.class_balance (re-exported by
                                                   metrics)
  first_conv_kernel, conv_activations,
  conv_layer_paths, conv_grad_norms                jaxcnn.evaluate.inspection

Metrics take host arrays (numpy or jax) and return numpy values; the only device work is
``predict_logits`` (and ``conv_activations``), which normalise uint8 images on the device.
"""

from jaxcnn.evaluate import inspection, metrics, prediction, tta  # noqa: F401 (submodules)
from jaxcnn.evaluate.inspection import *  # noqa: F403 (the names of inspection.__all__)
from jaxcnn.evaluate.metrics import *  # noqa: F403 (the names of metrics.__all__)
from jaxcnn.evaluate.prediction import *  # noqa: F403 (the names of prediction.__all__)

__all__ = [*prediction.__all__, *metrics.__all__, *inspection.__all__]
