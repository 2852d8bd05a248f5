"""Data parallelism with a ``jax.sharding.Mesh``: batch split over devices, state replicated.

One program for 1 device, 8 TPU cores or several hosts. The jitted step sees *global* arrays:
the batch is a ``NamedSharding(mesh, P("data"))`` array whose rows live on different devices,
the state is replicated (``P()``). GSPMD then inserts the collectives:

* the mean loss, and therefore the gradients, are means over the whole global batch (an
  all-reduce of the per-device partial sums), so every replica applies the same update;
* BatchNorm statistics are synchronised: the batch mean and variance are global reductions over
  axis 0 under GSPMD, so normalisation and the running statistics use the whole global batch,
  exactly as on one device with the same batch (what PyTorch calls SyncBatchNorm).

Hence N devices give the same numbers as 1 device up to float summation order.

Any device count: a train batch must split evenly (:func:`check_batch_size` says so, naming
valid sizes, before anything compiles); an evaluation batch is rounded up to a multiple of the
device count instead (:func:`padded_batch_size`; the padding is masked). When the training set
stays on the devices (``FitConfig.data_on_device``), it is replicated and each step gathers its
batch from row indices sharded like a batch (:func:`jit_indexed_train_step`).

Multi-host: every process builds the same mesh over ``jax.devices()`` (all hosts), loads only
its slice of each global batch (``epoch_batches`` slices by ``jax.process_index()``), and
:func:`shard_batch` assembles the global array with ``jax.make_array_from_process_local_data``.
Start the runtime first thing in a multi-process job: :func:`jaxcnn.distributed.initialize`
(the experiments' commands do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices, every host).

    The axis type is ``Auto`` (GSPMD propagates shardings), not jax 0.10's default Explicit.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over the ``data`` axis; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """ValueError unless the global batch splits evenly over the mesh's devices."""
    n = mesh.size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{what} must be a positive int, got {batch_size!r}")
    if batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {n} devices of the mesh; use a multiple "
            f"of {n} (e.g. {lower} or {lower + n})"
        )


def padded_batch_size(batch_size: int, mesh: Mesh, num_examples: int | None = None) -> int:
    """The evaluation batch actually used on ``mesh``: ``batch_size`` (capped at
    ``num_examples`` when given, so a small set is not padded to a large batch) rounded UP to a
    multiple of the device count.

    Evaluation pads the last batch and masks the padding (``pad_batch``), so rounding up drops
    no example and changes no result; it only lets any eval batch run on any number of devices
    (e.g. 500 on 8 devices -> 504).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if num_examples is not None:
        batch_size = max(1, min(batch_size, int(num_examples)))
    n = mesh.size
    return -(-batch_size // n) * n


def replicate(tree, mesh: Mesh):
    """Place a pytree (e.g. a TrainState) on every device of the mesh.

    With several processes each one passes the same values (host arrays, or arrays on its own
    devices) and builds its devices' copies from them (``jax.make_array_from_callback``: a
    ``device_put`` cannot reach other processes' devices). Typed PRNG keys go as key data.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                            impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Host arrays (this process's rows of a global batch) -> global arrays sharded on axis 0.

    Args:
      mesh: the data mesh.
      *arrays: per-process slices, each (B_local, ...), as yielded by ``epoch_batches``; the
        global batch is ``B_local * jax.process_count()`` rows.

    Returns:
      One ``jax.Array`` per input with ``NamedSharding(mesh, P("data"))``.
    """
    sharding = batch_sharding(mesh)
    out = []
    for a in arrays:
        global_rows = a.shape[0] * jax.process_count()
        check_batch_size(global_rows, mesh, what="global batch size")
        out.append(jax.make_array_from_process_local_data(sharding, a, (global_rows, *a.shape[1:])))
    return tuple(out)


def jit_train_step(step: Callable, mesh: Mesh, *, donate: bool = True) -> Callable:
    """``jax.jit`` a ``(state, images, labels) -> (state, metrics)`` step for the mesh.

    State in and out replicated, images and labels sharded on axis 0, metrics replicated; the
    input state's buffers are donated (``donate_argnums=0``), so do not reuse the old state.
    """
    rep, batch = replicated(mesh), batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(rep, batch, batch),
        out_shardings=(rep, rep),
        donate_argnums=(0,) if donate else (),
    )


def jit_indexed_train_step(
    step: Callable, mesh: Mesh, *, donate: bool = True, flips: bool = False
) -> Callable:
    """``jax.jit`` an indexed step from :func:`jaxcnn.train.steps.make_indexed_train_step`.

    The returned ``(state, images_all, labels_all, idx) -> (state, metrics)`` takes the whole
    dataset replicated on every device (put it there once with :func:`replicate`) and
    ``idx: (K, B)`` int32 row indices sharded over the batch axis (``P(None, "data")``), so
    each device gathers only its own rows of every batch, from its own copy, with no
    communication (build the step with ``batch_sharding=batch_sharding(mesh)`` to pin each
    gathered batch to the usual batch sharding). With ``flips=True`` it takes a fifth argument,
    the ``(K, B)`` bool mask of the rows to mirror (alternating flips), sharded like ``idx``.
    The state is donated, as in :func:`jit_train_step`.
    """
    rep, rows = replicated(mesh), NamedSharding(mesh, P(None, DATA_AXIS))
    in_shardings = (rep, rep, rep, rows, rows) if flips else (rep, rep, rep, rows)
    return jax.jit(
        step,
        in_shardings=in_shardings,
        out_shardings=(rep, rep),
        donate_argnums=(0,) if donate else (),
    )


def jit_eval_step(step: Callable, mesh: Mesh) -> Callable:
    """``jax.jit`` a ``(state, images, labels, mask) -> metrics`` step for the mesh.

    State replicated, the batch sharded on axis 0; output shardings are left to GSPMD (the
    sums come back replicated, the logits keep the batch sharding).
    """
    rep, batch = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, batch, batch, batch))
