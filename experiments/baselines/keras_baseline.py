"""Baseline: cnn3 or resnet20 trained (``model.fit``) and evaluated (``model.evaluate``) with
Keras 3 on the TensorFlow backend, CPU.

A standalone script for its own environment (see README.md); never imported by jaxcnn or its
tests. Run by ``python -m experiments.bench train --baselines`` or by hand:

    /root/venv-baselines/bin/python experiments/baselines/keras_baseline.py --model cnn3

Models (``--model``), the same architectures as ``jaxcnn.models.create(name)``, their trainable
parameter counts checked at start:

``cnn3`` (551,466 trainable parameters): for (filters, dropout) in (32, .2), (64, .3),
(128, .4): Conv3x3 same -> BatchNorm -> ReLU -> Conv3x3 same -> BatchNorm -> ReLU -> MaxPool 2x2
-> Dropout; Flatten -> Dense 128 -> ReLU -> Dropout .5 -> Dense 10.

``resnet20`` (269,722 trainable parameters): He et al.'s CIFAR ResNet-20 -- Conv3x3 16 (no
bias) -> BN -> ReLU, three stages of 3 basic blocks with 16/32/64 channels (the first block of
stages 2 and 3 has stride 2), global average pool, Dense 10. Basic block:
ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), convs without bias; shortcut option A
(identity; where the shape changes, keep every second pixel (0, 2, ...) -- a 1x1 max-pool with
stride 2 -- and zero-pad the new channels: no parameters). Stride-2 convs pad 1 on every side
(ZeroPadding2D(1) + "valid"), as jaxcnn and PyTorch, not TF's asymmetric "same". He-normal
(fan_out, untruncated) kernels, as jaxcnn.

BatchNorm momentum 0.9 / epsilon 1e-5 as in jaxcnn. SGD with Nesterov momentum 0.9 (lr 0.05),
sparse softmax cross-entropy on logits, accuracy metric (jaxcnn's steps report it too).

Data: random uint8 CIFAR-shaped images (speed does not depend on pixel values) held in memory
as a repeated ``tf.data`` dataset of uint8 batches; the model normalises them to float on the
fly (a Rescaling layer, per-channel mean/std), as jaxcnn's train and eval steps do. With
``--augment``, RandomFlip + 4-pixel ZeroPadding + RandomCrop layers run first in training
(jaxcnn pads by reflection); off by default.

Protocol: train, then eval. Train: one ``model.fit`` call with ``1 + repeats`` epochs of
``steps`` steps each (``steps_per_epoch``); epoch 1 is the warm-up (it traces and compiles the
train function), the others are the timed windows, timed by a callback from epoch begin to epoch
end (Keras turns the logs into Python numbers at epoch end, so the window's last step has
finished). Eval: ``1 + repeats`` ``model.evaluate`` calls of ``steps`` steps (the first traces
the test function and is not timed), each timed from test begin to test end (the window includes
starting an iterator over the cached dataset). Reported: the medians of the windows' images/s and
the process's peak resident set size (``peak_rss_mb``: ``VmHWM`` of ``/proc/self/status``, not
``ru_maxrss``, which Linux carries over from the parent across ``execve``). Prints one JSON line.
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
from peak_rss import add_common_options, peak_rss_mb  # noqa: E402  (this folder: the script's sys.path[0])

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PARAMS = {"cnn3": 551_466, "resnet20": 269_722}


def _inputs(augment: bool):
    """uint8 (N, 32, 32, 3) input, normalised to float per channel, optionally augmented."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in CIFAR10_STD],
        offset=[-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True)],
    )(keras.ops.cast(inputs, "float32"))
    if augment:
        x = keras.layers.RandomFlip("horizontal")(x)
        x = keras.layers.ZeroPadding2D(4)(x)
        x = keras.layers.RandomCrop(32, 32)(x)
    return inputs, x


def build_cnn3(augment: bool = False, num_classes: int = 10) -> keras.Model:
    """The cnn3 model on uint8 (N, 32, 32, 3) input, normalisation included."""
    inputs, x = _inputs(augment)
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


def _conv_bn(x, features: int, strides: int = 1):
    """3x3 conv (no bias, pad 1 on every side) -> BatchNorm."""
    he_normal = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    if strides > 1:
        x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(features, 3, strides, padding="valid" if strides > 1 else "same",
                            use_bias=False, kernel_initializer=he_normal)(x)
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)


def build_resnet20(augment: bool = False, num_classes: int = 10,
                   widths: tuple[int, ...] = (16, 32, 64), blocks_per_stage: int = 3
                   ) -> keras.Model:
    """ResNet-20 (shortcut A) on uint8 (N, 32, 32, 3) input, normalisation included."""
    inputs, x = _inputs(augment)
    x = keras.layers.ReLU()(_conv_bn(x, widths[0]))
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage):
            strides = 2 if (s > 0 and b == 0) else 1
            y = keras.layers.ReLU()(_conv_bn(x, width, strides))
            y = _conv_bn(y, width)
            shortcut = x
            if strides > 1:
                shortcut = keras.layers.MaxPooling2D(1, strides)(shortcut)
            extra = width - shortcut.shape[-1]
            if extra:
                shortcut = keras.ops.pad(shortcut, [[0, 0], [0, 0], [0, 0], [0, extra]])
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="resnet20")


BUILDERS = {"cnn3": build_cnn3, "resnet20": build_resnet20}


class WindowTimer(keras.callbacks.Callback):
    """Wall time of every fit epoch (one epoch = one window of ``steps_per_epoch`` steps) and
    of every evaluate call."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self.eval_times: list[float] = []
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t0)

    def on_test_begin(self, logs=None):
        self._t0 = time.perf_counter()

    def on_test_end(self, logs=None):
        self.eval_times.append(time.perf_counter() - self._t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_options(p, tuple(PARAMS))
    p.add_argument("--augment", action="store_true", help="random flip + pad-and-crop layers")
    p.add_argument("--pool", type=int, default=10, help="distinct random batches in memory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    keras.utils.set_random_seed(args.seed)
    model = BUILDERS[args.model](args.augment)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    if trainable != PARAMS[args.model]:
        raise SystemExit(f"{args.model} has {trainable} trainable parameters, expected "
                         f"{PARAMS[args.model]}")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
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
    for _ in range(1 + args.repeats):
        model.evaluate(dataset, steps=args.steps, verbose=0, callbacks=[timer])
    images_per_window = args.steps * args.batch_size
    windows = [images_per_window / t for t in timer.times[1:]]
    eval_windows = [images_per_window / t for t in timer.eval_times[1:]]
    print(json.dumps({
        "framework": "keras-tf",
        "model": args.model,
        "version": f"keras {keras.__version__}, tensorflow {tf.__version__}",
        "train_images_per_s": statistics.median(windows),
        "eval_images_per_s": statistics.median(eval_windows),
        "peak_rss_mb": peak_rss_mb(),
        "windows_images_per_s": windows,
        "eval_windows_images_per_s": eval_windows,
        "warmup_s": timer.times[0],
        "eval_warmup_s": timer.eval_times[0],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "augment": args.augment,
        "params": trainable,
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "cpus": os.cpu_count()},
        "protocol": "model.fit, 1 warm-up epoch + repeats timed epochs of steps steps; then "
                    "1 warm-up + repeats timed model.evaluate calls of steps steps",
    }))


if __name__ == "__main__":
    main()
