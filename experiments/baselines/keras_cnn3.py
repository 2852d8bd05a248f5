"""Baseline: cnn3 trained with Keras 3 on the TensorFlow backend, CPU, timed through ``model.fit``.

A standalone script for its own environment (see README.md); never imported by jaxcnn or its
tests. Run by ``python -m experiments.bench train --baselines`` or by hand:

    /root/venv-baselines/bin/python experiments/baselines/keras_cnn3.py --batch-size 128

Model: the cnn3 of ``jaxcnn.models`` -- for (filters, dropout) in (32, .2), (64, .3), (128, .4):
Conv3x3 same -> BatchNorm -> ReLU -> Conv3x3 same -> BatchNorm -> ReLU -> MaxPool 2x2 -> Dropout;
Flatten -> Dense 128 -> ReLU -> Dropout .5 -> Dense 10: 551,466 trainable parameters (checked).
BatchNorm momentum 0.9 / epsilon 1e-5 as in jaxcnn. SGD with Nesterov momentum 0.9 (lr 0.05),
sparse softmax cross-entropy on logits.

Data: random uint8 CIFAR-shaped images (speed does not depend on pixel values) held in memory
as a repeated ``tf.data`` dataset of uint8 batches; the model normalises them to float on the
fly (a Rescaling layer, per-channel mean/std), as jaxcnn's train step does. With ``--augment``,
RandomFlip + 4-pixel ZeroPadding + RandomCrop layers run first (jaxcnn pads by reflection); off
by default.

Protocol: one ``model.fit`` call with ``1 + repeats`` epochs of ``steps`` steps each
(``steps_per_epoch``); epoch 1 is the warm-up (it traces and compiles the train function), the
others are the timed windows, timed by a callback from epoch begin to epoch end (Keras turns
the logs into Python numbers at epoch end, so the window's last step has finished). Reported:
the median of the windows' images/s. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CNN3_PARAMS = 551_466


def build_cnn3(augment: bool = False, num_classes: int = 10) -> keras.Model:
    """The cnn3 model on uint8 (N, 32, 32, 3) input, normalisation included."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in CIFAR10_STD],
        offset=[-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)],
    )(keras.ops.cast(inputs, "float32"))
    if augment:
        x = keras.layers.RandomFlip("horizontal")(x)
        x = keras.layers.ZeroPadding2D(4)(x)
        x = keras.layers.RandomCrop(32, 32)(x)
    for filters, rate in ((32, 0.2), (64, 0.3), (128, 0.4)):
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Dropout(rate)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="cnn3")


class WindowTimer(keras.callbacks.Callback):
    """Wall time of every epoch (one epoch = one window of ``steps_per_epoch`` steps)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="train steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--augment", action="store_true", help="random flip + pad-and-crop layers")
    p.add_argument("--pool", type=int, default=10, help="distinct random batches in memory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    keras.utils.set_random_seed(args.seed)
    model = build_cnn3(args.augment)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    if trainable != CNN3_PARAMS:
        raise SystemExit(f"cnn3 has {trainable} trainable parameters, expected {CNN3_PARAMS}")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(args.seed)
    n = args.pool * args.batch_size
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int32)
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .batch(args.batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    timer = WindowTimer()
    model.fit(dataset, epochs=1 + args.repeats, steps_per_epoch=args.steps, verbose=0,
              shuffle=False, callbacks=[timer])
    windows = [args.steps * args.batch_size / t for t in timer.times[1:]]
    print(json.dumps({
        "framework": "keras-tf",
        "version": f"keras {keras.__version__}, tensorflow {tf.__version__}",
        "train_images_per_s": statistics.median(windows),
        "windows_images_per_s": windows,
        "warmup_s": timer.times[0],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "augment": args.augment,
        "params": trainable,
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "cpus": os.cpu_count()},
        "protocol": "model.fit, 1 warm-up epoch + repeats timed epochs of steps steps",
    }))


if __name__ == "__main__":
    main()
