"""The Keras side of ``tests/test_pretrained_keras.py``, run in a subprocess.

    python tests/keras_reference.py OUT_DIR

``OUT_DIR/inputs.npz`` (written by the test) holds the preprocessed images per network
(``mobilenet_v2``, ``resnet50``: float32 (N, 224, 224, 3)) and ``raw``: uint8 (M, 224, 224, 3)
images for the preprocessing check. This script builds ``keras.applications.MobileNetV2`` and
``ResNet50`` (``weights=None``, 224x224, 1000 classes, ``classifier_activation=None`` so the
outputs are logits), gives every BatchNorm random ``gamma``/``beta``, random moving statistics
(near the batch statistics of the images, so that the activations neither die out nor
saturate) and every bias random values (so that a mix-up in the port shows), and writes to
``OUT_DIR``:

* ``<net>.h5``: the weights in the legacy Keras HDF5 layout (the layout of the Keras
  Applications downloads), via ``keras.src.legacy.saving.legacy_h5_format``;
* ``mobilenet_v2_full.h5``: the whole MobileNetV2 saved with ``model.save`` (legacy full-model
  ``.h5``: weights under ``model_weights``);
* ``reference.npz``: ``<net>_logits`` (N, 1000), ``<net>_preprocess`` (Keras'
  ``preprocess_input`` of ``raw``: modes "tf" and "caffe"), and the ``count_params()`` of each
  net (``<net>_count``; MobileNetV2 also at ``alpha`` 0.35 and 1.4).

It runs in its own process so that ``KERAS_BACKEND=jax`` is set before Keras is imported, even
when the test process imported Keras earlier with another backend.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _fast_initialisers(keras) -> None:
    """Draw Keras' random initial weights with numpy: the JAX backend compiles one XLA program
    per weight shape (~20 s for these two nets on 2 CPU cores). The values are overwritten or
    irrelevant here (only their distribution matters)."""
    import jax.numpy as jnp
    from keras.src.backend.jax import random as jax_random

    rng = np.random.default_rng(1234)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        dtype = dtype or keras.config.floatx()
        return jnp.asarray(rng.uniform(minval, maxval, shape), dtype=dtype)

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        dtype = dtype or keras.config.floatx()
        return jnp.asarray(rng.normal(mean, stddev, shape), dtype=dtype)

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        dtype = dtype or keras.config.floatx()
        z = np.clip(rng.normal(0.0, 1.0, shape), -2.0, 2.0)
        return jnp.asarray(mean + stddev * z, dtype=dtype)

    jax_random.uniform = uniform
    jax_random.normal = normal
    jax_random.truncated_normal = truncated_normal


def _calibrate_batch_norm(keras, model, x) -> None:
    """Set every BatchNorm's moving statistics to the batch statistics of ``x`` (one jitted
    training-mode pass with momentum 0), so that the network keeps its inputs apart: with
    Keras' initial statistics (0, 1) the activations of a random MobileNetV2 die out and
    every image gets the same logits."""
    import jax

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    step = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True)[1])
    for variable, value in zip(model.non_trainable_variables, step(trainable, non_trainable, x),
                               strict=True):
        variable.assign(value)
    for layer, momentum in zip(bns, momenta, strict=True):
        layer.momentum = momentum


def _randomise(keras, model, x, seed: int) -> None:
    """Random BatchNorm gamma and beta, moving statistics near those of ``x`` but randomly off
    (mean shifted by up to ~0.2 std, variance scaled by 0.7 .. 1.4), random biases."""
    rng = np.random.default_rng(seed)
    _calibrate_batch_norm(keras, model, x)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            mean = np.asarray(layer.moving_mean.value)
            var = np.asarray(layer.moving_variance.value)
            layer.gamma.assign(rng.uniform(0.8, 1.2, c).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
            layer.moving_mean.assign(
                (mean + rng.normal(0.0, 0.1, c) * np.sqrt(var)).astype(np.float32)
            )
            layer.moving_variance.assign((var * rng.uniform(0.7, 1.4, c)).astype(np.float32))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.1, layer.bias.shape).astype(np.float32))


def _save_legacy_weights(model, path: str) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def main(out_dir: str) -> None:
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"Keras runs on {keras.backend.backend()!r}, not 'jax'")
    _fast_initialisers(keras)
    inputs = np.load(os.path.join(out_dir, "inputs.npz"))
    raw = inputs["raw"].astype(np.float32)
    apps = keras.applications
    out: dict[str, np.ndarray] = {
        "mobilenet_v2_preprocess": apps.mobilenet_v2.preprocess_input(raw.copy()),
        "resnet50_preprocess": apps.resnet50.preprocess_input(raw.copy()),
    }
    nets = {
        "mobilenet_v2": lambda: apps.MobileNetV2(weights=None, classifier_activation=None),
        "resnet50": lambda: apps.ResNet50(weights=None, classifier_activation=None),
    }
    for seed, (name, build) in enumerate(nets.items()):
        model = build()
        _randomise(keras, model, inputs[name], seed)
        _save_legacy_weights(model, os.path.join(out_dir, f"{name}.h5"))
        if name == "mobilenet_v2":
            model.save(os.path.join(out_dir, "mobilenet_v2_full.h5"))
        out[f"{name}_logits"] = np.asarray(model.predict(inputs[name], verbose=0))
        out[f"{name}_count"] = np.asarray(model.count_params())
    for alpha in (0.35, 1.4):
        model = apps.MobileNetV2(alpha=alpha, weights=None)
        out[f"mobilenet_v2_{alpha}_count"] = np.asarray(model.count_params())
    np.savez(os.path.join(out_dir, "reference.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
