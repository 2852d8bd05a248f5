"""Figures of a training run's results: data, augmentation, curves, confusion, predictions,
mistakes, learned filters and feature maps.

Every function takes plain numpy-convertible data plus an output ``path``, writes one PNG there
(parent folders created, dpi 150, via :func:`jaxcnn.viz.style.save_figure`) and returns the
path. Nothing here trains or evaluates a model: the experiment computes the numbers (with
``jaxcnn.evaluate``) and hands them over, so a figure always shows what was measured.

Images are ``(N, H, W, C)`` with C = 1 or 3 (or ``(N, H, W)`` grayscale), uint8 in [0, 255] or
floats in [0, 1]. Labels are int ``(N,)``; ``probs`` are ``(N, K)`` probabilities; class names
are ``K`` strings.

The figures live in one module per subject, all importable from here:

  sample_grid, augmentation_examples                     jaxcnn.viz.data
  training_curves, results_table_figure                  jaxcnn.viz.training
  confusion_matrix_plot, per_class_accuracy_bars,
  prediction_grid, confident_mistakes                    jaxcnn.viz.evaluation
  first_layer_filters, feature_maps                      jaxcnn.viz.learned

Matplotlib is imported inside the functions (``import jaxcnn`` never loads it).
"""

from jaxcnn.viz import data, evaluation, learned, training
from jaxcnn.viz.data import *  # noqa: F403 (the names of data.__all__)
from jaxcnn.viz.evaluation import *  # noqa: F403 (the names of evaluation.__all__)
from jaxcnn.viz.learned import *  # noqa: F403 (the names of learned.__all__)
from jaxcnn.viz.training import *  # noqa: F403 (the names of training.__all__)

__all__ = [*data.__all__, *training.__all__, *evaluation.__all__, *learned.__all__]
