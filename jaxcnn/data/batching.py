"""Host-side batching: deterministic epoch shuffles, multi-process slices, padding, prefetch.

Batches are numpy arrays in host memory (uint8 images, int32 labels); the train step moves them
to the devices and augments them there (:mod:`jaxcnn.data.augment`). When the whole dataset is
kept on the device instead (``FitConfig.data_on_device``), :func:`epoch_indices` gives the same
batches as row indices, taken from the same permutation.

Alternating flips (airbench, ``FitConfig.flip="alternate"``): :func:`alternating_flip_mask`
says which rows a batch of a given epoch shows mirrored; :func:`epoch_batches` mirrors them on
the host (``alternate_flip=True``), the device path passes the mask to its indexed step.

Multi-host: every process computes the same global permutation (it depends only on
``(seed, epoch)``) and takes its own contiguous slice of each global batch, so the slices of all
processes are disjoint and together form the global batch. On one process nothing changes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from jaxcnn.data.augment import flip_rows
from jaxcnn.data.dataset import CIFAR10_MEAN, CIFAR10_STD, ArrayDataset


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """(n,) int64 permutation of ``range(n)``, a pure function of ``(seed, epoch)``."""
    if n < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"n, seed and epoch must be >= 0, got n={n}, seed={seed}, epoch={epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


# Stream of the per-example flip bits (apart from the shuffles' (seed, epoch) streams).
FLIP_STREAM = 0xF11F


def alternating_flip_mask(rows, epoch: int, num_examples: int, seed: int) -> np.ndarray:
    """Which of ``rows`` are shown mirrored in ``epoch`` under alternating flips (airbench).

    Every training example gets one fixed random bit, ``np.random.default_rng([seed,
    FLIP_STREAM]).random(num_examples) < 0.5``: examples whose bit is set are mirrored in even
    epochs, the others in odd epochs. So each image is seen mirrored and unmirrored in
    consecutive epochs (every other epoch the same way), and about half of every batch is
    mirrored. A pure function of its arguments.

    Args:
      rows: int array of any shape (e.g. a batch's (B,) or an epoch's (steps, B) indices), each
        in ``[0, num_examples)``.
      epoch: the epoch (>= 0).
      num_examples: the size of the training set.
      seed: the run's seed (>= 0).

    Returns:
      bool array of ``rows``' shape.
    """
    if num_examples < 0 or seed < 0 or epoch < 0:
        raise ValueError(
            f"num_examples, seed and epoch must be >= 0, got {num_examples}, {seed}, {epoch}"
        )
    rows = np.asarray(rows)
    if rows.size and (rows.min() < 0 or rows.max() >= num_examples):
        raise ValueError(f"rows must be in [0, {num_examples}), got {rows.min()}..{rows.max()}")
    bits = np.random.default_rng([int(seed), FLIP_STREAM]).random(int(num_examples)) < 0.5
    return bits[rows] ^ bool(epoch % 2)


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches of ``batch_size`` in ``n`` examples (the last partial one counts only
    when ``drop_remainder`` is False)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_indices(
    n: int, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True
) -> np.ndarray:
    """The full global batches of one epoch as dataset row indices (the last partial batch is
    dropped, as :func:`epoch_batches` does when training).

    Row ``b`` holds the indices of global batch ``b`` of ``epoch_batches(dataset, batch_size,
    seed=seed, epoch=epoch, shuffle=shuffle)`` in the same order (on one process, the rows of
    ``images[idx[b]]`` are exactly that batch), so a loop that gathers batches on the device
    from these indices sees the same data in the same order as the host path.

    Returns:
      ``(num_batches(n, batch_size), batch_size)`` int32.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    steps = num_batches(n, batch_size, drop_remainder=True)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        if process_index is None:
            process_index = jax.process_index()
        if process_count is None:
            process_count = jax.process_count()
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index} and {process_count}"
        )
    return int(process_index), int(process_count)


def epoch_batches(
    dataset: ArrayDataset,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    alternate_flip: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the batches of one epoch as host numpy arrays.

    Args:
      dataset: an :class:`ArrayDataset` (anything with ``images`` and ``labels`` arrays works).
      batch_size: the GLOBAL batch size (summed over processes); must be divisible by
        ``process_count``.
      seed, epoch: the shuffle is ``epoch_permutation(len(dataset), seed, epoch)``.
      shuffle: False keeps the dataset order (evaluation).
      drop_remainder: True drops the last partial batch (training, one compiled shape); False
        yields it, smaller (evaluation; see :func:`pad_batch` to keep one shape).
      process_index, process_count: this process's slice; default ``jax.process_index()`` and
        ``jax.process_count()``.
      alternate_flip: mirror (left-right) the rows that :func:`alternating_flip_mask` picks for
        ``(epoch, seed)`` (airbench's alternating flips; the device path applies the same mask
        after its gather).

    Yields:
      ``(images, labels)``: (B, H, W, C) uint8 and (B,) int32 with
      ``B = batch_size // process_count`` (this process's contiguous slice of each global batch).
      A final partial global batch of r examples is cut into process_count contiguous pieces
      whose sizes differ by at most one.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pi, pc = _process_info(process_index, process_count)
    if batch_size % pc:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the number of processes {pc}; "
            f"use a multiple of {pc}"
        )
    images, labels = dataset.images, dataset.labels
    n = len(labels)
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    local = batch_size // pc
    flips = alternating_flip_mask(order, epoch, n, seed) if alternate_flip else None
    for b in range(num_batches(n, batch_size, drop_remainder)):
        pos = np.arange(b * batch_size, min((b + 1) * batch_size, n))
        if len(pos) == batch_size:
            pos = pos[pi * local : (pi + 1) * local]
        else:
            pos = np.array_split(pos, pc)[pi]
        idx = order[pos]
        if flips is None:
            yield images[idx], labels[idx]
        else:
            yield flip_rows(np.asarray(images[idx]), flips[pos]), labels[idx]


def pad_batch(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad a (possibly short) batch with zeros up to ``batch_size`` rows.

    Args:
      images: (B, H, W, C) with B <= batch_size.
      labels: (B,).
      batch_size: rows of the output.

    Returns:
      ``(images, labels, mask)``: (batch_size, H, W, C), (batch_size,) and (batch_size,) float32
      mask, 1.0 for the B real rows and 0.0 for padding. Weight per-example metrics by the mask.
    """
    b = len(images)
    if len(labels) != b:
        raise ValueError(f"images and labels differ in length: {b} and {len(labels)}")
    if b > batch_size:
        raise ValueError(f"batch of {b} rows does not fit in batch_size {batch_size}")
    mask = np.zeros(batch_size, np.float32)
    mask[:b] = 1.0
    if b == batch_size:
        return images, labels, mask
    pad_images = np.zeros((batch_size - b, *images.shape[1:]), images.dtype)
    pad_labels = np.zeros((batch_size - b, *labels.shape[1:]), labels.dtype)
    return (
        np.concatenate([images, pad_images]),
        np.concatenate([labels, pad_labels]),
        mask,
    )


_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(iterator: Iterable[Any], size: int = 2) -> Iterator[Any]:
    """Run ``iterator`` in a background thread, keeping up to ``size`` items ready.

    Exceptions raised by the iterator are re-raised in the consumer. Leaving the loop early
    (break, exception, garbage collection) stops the thread.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Raised(exc))
            return
        put(_END)

    thread = threading.Thread(target=worker, name="jaxcnn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()


def pipeline_images_per_s(
    dataset: ArrayDataset,
    batch_size: int = 128,
    n_batches: int = 50,
    *,
    crop_pad: int = 4,
    flip: bool = True,
    cutout_size: int = 0,
    use_prefetch: bool = True,
    warmup: int = 3,
    seed: int = 0,
) -> float:
    """Measure the input pipeline: host batches -> device -> augment + normalise, in images/s.

    Each batch is drawn by :func:`epoch_batches` (shuffled), put on the default device, augmented
    (:func:`jaxcnn.data.augment.augment`) and normalised to float32 in one jit-compiled function,
    and waited for with ``block_until_ready``. The first ``warmup`` batches (compilation) are not
    timed. Epochs roll over when the dataset runs out.

    Returns:
      images per second over ``n_batches`` timed batches.
    """
    import jax

    from jaxcnn.data.augment import augment, normalize

    per_epoch = num_batches(len(dataset), batch_size)
    if per_epoch == 0:
        raise ValueError(f"dataset of {len(dataset)} examples is smaller than batch {batch_size}")
    c = dataset.images.shape[-1]
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)

    @jax.jit
    def step(key, images):
        x = augment(key, images, crop_pad=crop_pad, flip=flip, cutout_size=cutout_size)
        return normalize(x, mean, std)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = 0
        while True:
            yield from epoch_batches(dataset, batch_size, seed=seed, epoch=epoch,
                                     process_index=0, process_count=1)
            epoch += 1

    source: Iterator = batches()
    if use_prefetch:
        source = prefetch(source, 2)
    key = jax.random.key(seed)
    total = warmup + n_batches
    start = 0.0
    for i, (images, _labels) in enumerate(source):
        if i == warmup:
            start = time.perf_counter()
        step(jax.random.fold_in(key, i), jax.device_put(images)).block_until_ready()
        if i + 1 == total:
            break
    elapsed = time.perf_counter() - start
    if use_prefetch:
        source.close()  # type: ignore[attr-defined]
    return n_batches * batch_size / elapsed
