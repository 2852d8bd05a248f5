"""Where the training batches come from: the feeds that run a train step over an epoch.

A feed is any object with ``on_device`` (whether its metrics come stacked per dispatch) and
``epoch(state, epoch)``, a generator of ``(state, metrics, steps)`` per dispatch: the train
phase of :func:`jaxcnn.train.fit` (and of :mod:`jaxcnn.transfer`'s phases) runs one.

* :class:`HostFeed` (the *host path*): each step's batch gathered in numpy
  (:func:`~jaxcnn.data.epoch_batches`, this process's slice) and copied to the devices
  (:func:`~jaxcnn.train.mesh.shard_batch`). The multi-host contract.
* :class:`DeviceFeed` (the *device path*): the uint8 training set put on every device once,
  each call sends only row indices (:func:`~jaxcnn.data.batching.epoch_indices`: the same
  seeded permutation, hence the same batches in the same order and the same numbers), K steps
  per call with ``lax.scan``. Single-process.

With ``FitConfig.flip="alternate"`` both mirror the same rows
(:func:`~jaxcnn.data.alternating_flip_mask`: numpy on the host, after the gather on the device).
:func:`resolve_data_on_device` picks the path for ``FitConfig.data_on_device``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import numpy as np

from jaxcnn.host_malloc import reuse_freed_memory
from jaxcnn.train.builder import Engine
from jaxcnn.train.mesh import batch_sharding, replicated, shard_batch

# data_on_device="auto" on an accelerator keeps the training set on the devices when one copy
# (every device holds a full copy) takes at most this share of a device's memory...
DEVICE_DATA_FRACTION = 0.25
# ... or, when the device does not report its memory, at most this many bytes.
DEVICE_DATA_FALLBACK_BYTES = 1 << 30


def dataset_nbytes(dataset) -> int:
    """Bytes of a dataset's uint8 images plus its int32 labels (one copy)."""
    return int(np.asarray(dataset.images).nbytes + 4 * len(dataset.labels))


def resolve_data_on_device(setting, dataset, mesh=None) -> bool:
    """Whether ``fit`` keeps ``dataset`` on the devices, for a ``FitConfig.data_on_device``
    setting (``True``, ``False`` or ``"auto"``; see :class:`FitConfig`).

    Always False with several processes (the device path is single-process). ``"auto"``: False
    on CPU; on an accelerator True when one copy of the dataset is at most
    ``DEVICE_DATA_FRACTION`` of the smallest device memory of the mesh (or
    ``DEVICE_DATA_FALLBACK_BYTES`` when the device does not report it).
    """
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ValueError(f"data_on_device must be True, False or 'auto', got {setting!r}")
    if setting is False or jax.process_count() > 1:
        return False
    if setting is True:
        return True
    devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()
    if any(d.platform == "cpu" for d in devices):
        return False
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - a backend without memory stats
            stats = {}
        if stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    budget = DEVICE_DATA_FRACTION * min(limits) if limits else DEVICE_DATA_FALLBACK_BYTES
    return dataset_nbytes(dataset) <= budget


# The largest temporary buffer of a CPU train step whose freed memory an epoch keeps for reuse
# (jaxcnn.host_malloc.reuse_freed_memory; the same 1 GiB as its trim threshold). glibc cannot
# reuse a freed hole for an aligned request of the same size, so a larger buffer is allocated
# afresh at the top of the heap every step: resident memory doubles and nothing is saved
# (airbench94_muon's step at batch 2000, float32: 7.7 GiB instead of 4.2 GiB, no faster).
REUSE_LIMIT_BYTES = 1 << 30


def step_temp_bytes(train_step, state, batch_size: int, image_shape,
                    mesh=None) -> int | None:
    """The temporary buffer of the jitted ``train_step(state, images, labels)`` on uint8
    batches of ``batch_size`` x ``image_shape``, from XLA's memory analysis of the compiled
    step; None when the backend does not report it. With the ``mesh`` the batches will be
    sharded over (and ``state`` placed as the step gets it), the jitted function then reuses
    this compilation: nothing compiles twice."""
    rows = None if mesh is None else batch_sharding(mesh)
    structs = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)),
        state)
    images = jax.ShapeDtypeStruct((batch_size, *image_shape), np.uint8, sharding=rows)
    labels = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=rows)
    try:
        analysis = train_step.lower(structs, images, labels).compile().memory_analysis()
    except (NotImplementedError, AttributeError):
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


class HostFeed:
    """Host path: each step's batch gathered in numpy (``epoch_batches``, this process's slice)
    and copied to the devices (``shard_batch``), one jitted step per batch. ``alternate_flip``:
    the rows that :func:`~jaxcnn.data.alternating_flip_mask` picks are mirrored in numpy
    first. ``reuse_memory``: each epoch runs in :func:`~jaxcnn.host_malloc.reuse_freed_memory`
    (:func:`make_feed` decides it from the step's buffer size). ``step_for_epoch``: optional
    ``epoch -> train_step`` that replaces ``train_step`` (:meth:`~jaxcnn.train.builder.Engine.
    train_steps_for`)."""

    on_device = False

    def __init__(
        self, train_step, dataset, batch_size: int, mesh, seed: int, alternate_flip: bool = False,
        reuse_memory: bool = False, step_for_epoch: Callable[[int], Callable] | None = None,
    ):
        self.step, self.dataset, self.batch_size = train_step, dataset, batch_size
        self.mesh, self.seed, self.alternate_flip = mesh, seed, bool(alternate_flip)
        self.reuse_memory = bool(reuse_memory)
        self.step_for_epoch = step_for_epoch

    def epoch(self, state, epoch: int):
        """Yield ``(state, metrics, steps)`` per dispatch; metrics are per-step scalars."""
        from jaxcnn.data import epoch_batches

        batches = epoch_batches(self.dataset, self.batch_size, seed=self.seed, epoch=epoch,
                                alternate_flip=self.alternate_flip)
        step = self.step if self.step_for_epoch is None else self.step_for_epoch(epoch)
        with reuse_freed_memory() if self.reuse_memory else contextlib.nullcontext():
            for images, labels in batches:
                state, metrics = step(state, *shard_batch(self.mesh, images, labels))
                yield state, metrics, 1


class DeviceFeed:
    """Device path: the uint8 dataset replicated on every device once; each call sends only
    ``(K, B)`` int32 row indices (:func:`~jaxcnn.data.batching.epoch_indices`) and runs K steps
    that gather their batches on the device (``mesh`` None: a plain ``jax.jit`` step on the
    default device). ``dataset``: anything with ``images`` (N, ...) and ``labels`` (N,)
    (cached features serve too). ``alternate_flip``: each call also sends the
    ``(K, B)`` bool mask of :func:`~jaxcnn.data.alternating_flip_mask` (the indexed step must
    take it: ``jit_indexed_train_step(..., flips=True)``) and the step mirrors those rows after
    its gather. On a mesh it is single-process; with ``mesh=None`` (one local device: the
    transfer head) every process may run it, each the same computation. ``step_for_epoch``:
    optional ``epoch -> indexed_step`` that replaces ``indexed_step``."""

    on_device = True

    def __init__(
        self,
        indexed_step,
        dataset,
        batch_size: int,
        mesh,
        seed: int,
        steps_per_dispatch: int = 1,
        alternate_flip: bool = False,
        step_for_epoch: Callable[[int], Callable] | None = None,
    ):
        if mesh is not None and jax.process_count() > 1:
            raise ValueError(
                "the device data path is single-process; with several processes use the host "
                "path (data_on_device=False)"
            )
        if isinstance(steps_per_dispatch, bool) or not isinstance(steps_per_dispatch, int) or (
            steps_per_dispatch < 1
        ):
            raise ValueError(
                f"steps_per_dispatch must be a positive int, got {steps_per_dispatch!r}"
            )
        self.step, self.batch_size, self.seed = indexed_step, batch_size, seed
        self.step_for_epoch = step_for_epoch
        self.steps_per_dispatch = steps_per_dispatch
        self.alternate_flip = bool(alternate_flip)
        self.size = len(dataset.labels)
        rep = None if mesh is None else replicated(mesh)  # None: the default device
        self.images = jax.device_put(np.asarray(dataset.images), rep)
        self.labels = jax.device_put(np.asarray(dataset.labels, np.int32), rep)

    def epoch(self, state, epoch: int):
        """Yield ``(state, metrics, steps)`` per dispatch; metrics have a leading steps axis."""
        from jaxcnn.data.batching import alternating_flip_mask, epoch_indices

        idx = epoch_indices(self.size, self.batch_size, seed=self.seed, epoch=epoch)
        flips = (
            alternating_flip_mask(idx, epoch, self.size, self.seed) if self.alternate_flip else None
        )
        k = self.steps_per_dispatch
        step = self.step if self.step_for_epoch is None else self.step_for_epoch(epoch)
        for start in range(0, len(idx), k):
            block = idx[start : start + k]
            if flips is None:
                state, metrics = step(state, self.images, self.labels, block)
            else:
                state, metrics = step(
                    state, self.images, self.labels, block, flips[start : start + k]
                )
            yield state, metrics, len(block)


def make_feed(
    engine: Engine,
    dataset,
    *,
    on_device: bool = False,
    steps_per_dispatch: int | None = None,
) -> HostFeed | DeviceFeed:
    """The training-batch source ``fit`` uses (also for benchmarks): ``feed.epoch(state, e)``
    yields ``(state, metrics, steps)`` for every dispatch of epoch ``e``, with the engine's
    steps (:func:`~jaxcnn.train.build`), its config's batch size and seed.
    ``on_device`` picks :class:`DeviceFeed` (``steps_per_dispatch`` steps per call; default the
    config's) over :class:`HostFeed`; both give the same batches in the same order (mirrored
    alike with ``flip="alternate"``)."""
    config = engine.config
    alternate = engine.preprocess.alternating_flips
    if on_device:
        k = config.steps_per_dispatch if steps_per_dispatch is None else steps_per_dispatch
        return DeviceFeed(engine.indexed_step, dataset, config.batch_size, engine.mesh,
                          config.seed, k, alternate_flip=alternate,
                          step_for_epoch=lambda epoch: engine.train_steps_for(epoch)[1])
    reuse = False
    if jax.default_backend() == "cpu":  # the step compiles here, in the first epoch's time
        temp = step_temp_bytes(engine.train_step, engine.state, config.batch_size,
                               dataset.images.shape[1:], engine.mesh)
        reuse = temp is not None and temp <= REUSE_LIMIT_BYTES
    return HostFeed(engine.train_step, dataset, config.batch_size, engine.mesh, config.seed,
                    alternate_flip=alternate, reuse_memory=reuse,
                    step_for_epoch=lambda epoch: engine.train_steps_for(epoch)[0])


def stack_metrics(entries, stacked: bool) -> dict[str, np.ndarray]:
    """Fetch a list of per-dispatch metric dicts to host arrays with a leading steps axis."""
    got = jax.device_get(entries)
    join = np.concatenate if stacked else np.stack
    return {k: join([np.asarray(g[k]) for g in got]) for k in got[0]}


__all__ = [
    "DEVICE_DATA_FALLBACK_BYTES",
    "DEVICE_DATA_FRACTION",
    "DeviceFeed",
    "HostFeed",
    "REUSE_LIMIT_BYTES",
    "dataset_nbytes",
    "make_feed",
    "resolve_data_on_device",
    "stack_metrics",
    "step_temp_bytes",
]
