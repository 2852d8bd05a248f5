"""Orbax checkpoints: ``<workdir>/checkpoints/latest/<epoch>`` and ``.../best/<epoch>``.

Each checkpoint holds the train state's arrays (step, params, batch_stats, opt_state, the PRNG
key as raw key data) and a JSON ``meta`` item (epoch, best metric, history, config). Orbax
writes each checkpoint into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact (an unfinished one is ignored and cleaned up).
``latest`` keeps the newest ``keep`` checkpoints, ``best`` only the best one. Ensemble states
(leading model axis) are saved the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from jaxcnn.train.state import TrainState

WHICH = ("latest", "best")


def checkpoint_dir(workdir: str | os.PathLike, which: str = "latest") -> Path:
    """``<workdir>/checkpoints/<which>``."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    return Path(workdir).absolute() / "checkpoints" / which


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory, options=options)


def state_to_tree(state: TrainState) -> dict[str, Any]:
    """The arrays of a TrainState as nested dicts (typed PRNG keys as uint32 key data)."""
    tree = serialization.to_state_dict(state)
    tree["rng"] = jax.random.key_data(state.rng)
    return tree


def tree_to_state(template: TrainState, tree: dict[str, Any]) -> TrainState:
    """Fill a template TrainState (same model, optimizer, ensemble size) with saved arrays."""
    expected = jax.tree.structure(state_to_tree(template))
    got = jax.tree.structure(tree)
    if expected != got:
        raise ValueError(
            "checkpoint does not match this model/optimizer: the saved state has a different "
            "structure. Use a new workdir (or resume=False) for a different configuration."
        )
    shapes_t = [np.shape(a) for a in jax.tree.leaves(state_to_tree(template))]
    shapes_c = [np.shape(a) for a in jax.tree.leaves(tree)]
    if shapes_t != shapes_c:
        bad = next((t, c) for t, c in zip(shapes_t, shapes_c, strict=True) if t != c)
        raise ValueError(
            f"checkpoint array shape {bad[1]} differs from this model's {bad[0]}; use a new "
            "workdir (or resume=False) for a different configuration"
        )
    rng = jax.random.wrap_key_data(np.asarray(tree["rng"]), impl=jax.random.key_impl(template.rng))
    rest = {k: v for k, v in tree.items() if k != "rng"}
    state = serialization.from_state_dict(template, {**rest, "rng": template.rng})
    return state.replace(rng=rng)


def save(
    workdir: str | os.PathLike,
    state: TrainState,
    *,
    epoch: int,
    meta: dict[str, Any],
    best: bool = False,
    keep: int = 2,
) -> None:
    """Save ``state`` after ``epoch`` (1-based count of finished epochs) as latest, and as best.

    Args:
      workdir: run directory; checkpoints go to ``<workdir>/checkpoints``.
      state: a TrainState (single model or ensemble); fetched to host, so sharded states work.
      epoch: finished epochs, the checkpoint's step number.
      meta: JSON-serialisable dict (the fit loop stores epoch, best metric, history, config).
      best: also write it to ``best`` (only the newest best is kept).
      keep: how many ``latest`` checkpoints to keep.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    tree = jax.device_get(state_to_tree(state))
    meta = {**meta, "epoch": int(epoch)}
    targets = [("latest", keep)] + ([("best", 1)] if best else [])
    for which, n in targets:
        with _manager(checkpoint_dir(workdir, which), n) as mgr:
            mgr.save(
                int(epoch),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            mgr.wait_until_finished()


def latest_epoch(workdir: str | os.PathLike, which: str = "latest") -> int | None:
    """The epoch of the newest complete checkpoint, or None."""
    directory = checkpoint_dir(workdir, which)
    if not directory.exists():
        return None
    with _manager(directory, 1000) as mgr:
        return mgr.latest_step()


def restore(
    workdir: str | os.PathLike, which: str = "latest", *, target: TrainState | None = None
) -> tuple[Any, dict[str, Any]] | None:
    """Load the newest ``latest`` (or ``best``) checkpoint.

    Args:
      workdir: run directory given to :func:`save`.
      which: ``"latest"`` or ``"best"``.
      target: a freshly created TrainState of the same model and optimizer; when given, the
        result is a TrainState, otherwise a dict of numpy arrays (``params``, ``batch_stats``,
        ``opt_state``, ``step``, ``rng`` key data), enough for evaluation or export.

    Returns:
      ``(state, meta)``, or None when there is no checkpoint.
    """
    directory = checkpoint_dir(workdir, which)
    if not directory.exists():
        return None
    with _manager(directory, 1000) as mgr:
        step = mgr.latest_step()
        if step is None:
            return None
        item = ocp.args.StandardRestore()
        if target is not None:
            item = ocp.args.StandardRestore(
                jax.tree.map(lambda a: np.zeros(np.shape(a), a.dtype), state_to_tree(target))
            )
        try:
            out = mgr.restore(
                step, args=ocp.args.Composite(state=item, meta=ocp.args.JsonRestore())
            )
        except (ValueError, KeyError, TypeError) as e:
            if target is None:
                raise
            raise ValueError(
                f"checkpoint {directory / str(step)} does not match this model/optimizer ({e}); "
                "use a new workdir (or resume=False) for a different configuration"
            ) from None
    tree = jax.device_get(out["state"])
    meta = dict(out["meta"])
    if target is None:
        return tree, meta
    return tree_to_state(target, tree), meta
