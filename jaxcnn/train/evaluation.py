"""Evaluation of a train state on a whole dataset, data parallel over the mesh.

:func:`evaluate_dataset` is the public entry (any state, a preprocess, a batch size);
:func:`evaluate_batches` is the loop it shares with :func:`jaxcnn.train.fit`'s evaluate phase:
batches rounded up to a multiple of the device count, the last one padded and masked, so no
example is dropped or counted twice.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcnn.train.builder import jitted_eval_step
from jaxcnn.train.mesh import make_mesh, padded_batch_size, replicate, shard_batch
from jaxcnn.train.state import TrainState
from jaxcnn.train.steps import Preprocess


def _to_host(x) -> np.ndarray:
    """A (possibly multi-process sharded) global array as one host numpy array."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate_batches(eval_step, state, dataset, batch_size, mesh, *, keep_logits, progress=False):
    """Run ``eval_step`` over ``dataset`` in padded, masked batches of (about) ``batch_size``.

    Returns ``{"loss", "accuracy"}`` (means over the examples; (K,) arrays for an ensemble,
    which also gets ``ensemble_loss``/``ensemble_accuracy``) and, with ``keep_logits``, the
    float32 ``logits`` (N, C) (ensemble: (K, N, C)), gathered from every process.
    """
    from tqdm.auto import tqdm

    from jaxcnn.data import epoch_batches, num_batches, pad_batch

    batch_size = padded_batch_size(batch_size, mesh, len(dataset))
    local = batch_size // jax.process_count()
    sums: dict[str, Any] = {}
    logits = []
    batches = epoch_batches(dataset, batch_size, shuffle=False, drop_remainder=False)
    total = num_batches(len(dataset), batch_size, drop_remainder=False)
    bar = tqdm(total=total, desc="eval", leave=False, disable=not progress)
    for images, labels in batches:
        images, labels, mask = pad_batch(images, labels, local)
        x, y, m = shard_batch(mesh, images, labels, mask)
        out = eval_step(state, x, y, m)
        for k, v in out.items():
            if k != "logits":
                sums[k] = v if k not in sums else sums[k] + v
        if keep_logits:
            lg = _to_host(out["logits"])
            real = _to_host(m) > 0  # every process's padding sits after its own rows
            logits.append(lg[..., real, :])
        bar.update(1)
    bar.close()
    sums = {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}
    count = float(sums["count"])
    result: dict[str, Any] = {
        "loss": sums["loss_sum"] / count,
        "accuracy": sums["correct"] / count,
    }
    if "ensemble_correct" in sums:
        result["ensemble_loss"] = float(sums["ensemble_loss_sum"] / count)
        result["ensemble_accuracy"] = float(sums["ensemble_correct"] / count)
    if keep_logits:
        result["logits"] = np.concatenate(logits, axis=-2)
    return result


def evaluate_dataset(
    state: TrainState,
    dataset,
    preprocess: Preprocess,
    batch_size: int = 500,
    *,
    mesh=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a (single-model or ensemble) state on a whole dataset, data parallel.

    Args:
      state: a TrainState; an ensemble state (``state.step.ndim == 1``) is evaluated per member.
      dataset: an ``ArrayDataset`` (uint8 images (N, H, W, C), int labels (N,)).
      preprocess: its normalisation is applied (no augmentation).
      batch_size: eval batch, any positive int; capped at N and rounded up to a multiple of the
        device count; the last batch is padded and masked (one compiled shape, no example
        dropped).
      mesh: default :func:`make_mesh` (every device).

    Returns:
      ``{"loss", "accuracy", "logits"}``: mean cross-entropy and accuracy (floats, or (K,)
      arrays for an ensemble, which also gets ``ensemble_loss``/``ensemble_accuracy`` of the
      averaged probabilities), and float32 logits (N, C) (ensemble: (K, N, C)).
    """
    mesh = make_mesh() if mesh is None else mesh
    padded_batch_size(batch_size, mesh)  # a bad value is a ValueError here, before any jit
    ensemble = np.ndim(state.step) == 1
    num_classes = getattr(dataset, "num_classes", None)
    eval_step = jitted_eval_step(preprocess, num_classes, mesh, ensemble)
    result = evaluate_batches(eval_step, replicate(state, mesh), dataset, batch_size, mesh,
                              keep_logits=True, progress=progress)
    if not ensemble:
        result["loss"], result["accuracy"] = float(result["loss"]), float(result["accuracy"])
    return result


__all__ = ["evaluate_batches", "evaluate_dataset"]
