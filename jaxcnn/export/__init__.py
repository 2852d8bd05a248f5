"""Self-contained model bundles: save a trained model once, load it anywhere, predict on images.

A bundle is a directory with two files:

``bundle.json``
    format version, model name and options (enough to rebuild the module through
    ``jaxcnn.models.create``), number and names of the classes, preprocessing (input size
    ``(H, W)``, channels, per-channel ``mean``/``std`` on the [0, 1] scale), training metrics,
    the jaxcnn version and the creation time (UTC, ISO 8601), and ``tta``: the test-time
    augmentation ``predict`` applies (one of ``jaxcnn.evaluate.TTA_MODES``; a bundle written
    before the key existed reads as ``"none"``).
``variables.msgpack``
    ``flax.serialization.to_bytes`` of the variables (``params`` and, where BatchNorm is used,
    ``batch_stats``) as host numpy arrays; floating leaves are stored as float32.

Usage::

    from jaxcnn import export
    export.save("runs/cnn3/bundle", model_name="cnn3", model_options={}, variables=variables,
                class_names=names, preprocessing=dict(input_size=(32, 32), mean=MEAN, std=STD),
                metrics={"test_accuracy": 0.88}, tta="flip")
    bundle = export.load("runs/cnn3/bundle")
    probs = bundle.predict(images_uint8)          # (N, num_classes), rows sum to 1
    bundle.top_k("cat.jpg", k=3)                  # [[("cat", 0.91), ("dog", 0.05), ...]]

``save`` is atomic: a reader never sees a half-written bundle, and an existing bundle at
``path`` is replaced only after the new one is complete.

The parts:
  jaxcnn.export.format   the files on disk: names, version, JSON fields and their checks, the
                         atomic write
  jaxcnn.export.store    save / load (variables checked against the rebuilt model)
  jaxcnn.export.bundle   Bundle (images in, probabilities out) and load_image
"""

from jaxcnn.export.bundle import Bundle, load_image
from jaxcnn.export.format import BUNDLE_JSON, FORMAT_VERSION, VARIABLES_FILE
from jaxcnn.export.store import load, save

__all__ = [
    "BUNDLE_JSON",
    "FORMAT_VERSION",
    "VARIABLES_FILE",
    "Bundle",
    "load",
    "load_image",
    "save",
]
