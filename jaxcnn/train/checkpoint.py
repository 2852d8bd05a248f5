"""Orbax checkpoints: ``<workdir>/checkpoints/latest/<epoch>`` and ``.../best/<epoch>``.

Each checkpoint holds the train state's arrays (step, params, batch_stats, opt_state, the PRNG
key as raw key data) and a JSON ``meta`` item (epoch, best metric, history, config). ``latest``
keeps the newest ``keep`` checkpoints, ``best`` only the best one. Ensemble states (leading
model axis) are saved the same way.

Damage. Orbax writes each checkpoint into a temporary directory (``<epoch>.orbax-checkpoint-tmp*``)
and renames it when complete, so a run killed mid-save leaves the previous checkpoints intact;
the unfinished directory is ignored and removed by the next :func:`save`. Files can still be
damaged afterwards (a full disk, a copy cut short, bit rot), and the array data of a checkpoint
carries no checksum of its own: random bytes in a chunk can decode to wrong numbers without
any error. So :func:`save` stores a SHA-256 digest of the arrays and of the meta in the meta,
and :func:`restore` reads every array in full and checks both digests. A checkpoint that fails
(a read error, a missing or truncated file, garbage JSON, a digest mismatch) gets one
:class:`CheckpointWarning` line naming its path and the error, and the next older one is tried:
``latest`` and ``best`` both count (the same epoch in either directory holds the same state).
When checkpoints exist but none is readable, :func:`restore` raises
:class:`CheckpointUnreadable` rather than letting a run start over silently (or over a
checkpoint that a newer orbax could still read): move the ``checkpoints`` directory away, or
train with ``resume=False``, to start from scratch. Checkpoints written before the digests
existed are read in full but not verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from jaxcnn.train.optim import leaf_path
from jaxcnn.train.state import TrainState

WHICH = ("latest", "best")

# Key of the digests inside the saved meta (removed from the meta that restore returns).
_DIGESTS = "_sha256"


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read; an older one is used instead."""


class CheckpointUnreadable(ValueError):
    """Checkpoints exist but none of them can be read."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space left, a read-only folder, ...); the
    checkpoints written before it are intact."""


def checkpoint_dir(workdir: str | os.PathLike, which: str = "latest") -> Path:
    """``<workdir>/checkpoints/<which>``."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    return Path(workdir).absolute() / "checkpoints" / which


def _manager(directory: Path, keep: int | None) -> ocp.CheckpointManager:
    """A synchronous manager; ``keep=None`` only reads (creates and removes nothing)."""
    writing = keep is not None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=writing,
        cleanup_tmp_directories=writing,
        enable_async_checkpointing=False,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


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


# ---------------------------------------------------------------------------------------------
# Digests
# ---------------------------------------------------------------------------------------------


def tree_digest(tree) -> str:
    """SHA-256 over every array of ``tree`` (name, dtype, shape and bytes), in name order."""
    h = hashlib.sha256()
    leaves = sorted(
        ((leaf_path(p), np.asarray(a)) for p, a in jax.tree.leaves_with_path(tree)),
        key=lambda item: item[0],
    )
    for name, a in leaves:
        h.update(f"{name}|{a.dtype.name}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _json_default(o):
    if isinstance(o, np.ndarray | np.generic):
        return o.tolist()
    raise TypeError(f"checkpoint meta must be JSON-serialisable; got {type(o).__name__} {o!r}")


def _meta_digest(meta: dict[str, Any]) -> str:
    text = json.dumps(meta, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------


def _step_dirs(directory: Path) -> dict[int, Path]:
    """Step directories by epoch (names that are plain integers)."""
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()}


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

    Checkpoints of this or later epochs already in the directories are replaced: they belong to
    an abandoned continuation (a damaged checkpoint the run fell back from, or an earlier run
    in the same workdir restarted with ``resume=False``). Unfinished directories of a killed
    save are removed.

    Args:
      workdir: run directory; checkpoints go to ``<workdir>/checkpoints``.
      state: a TrainState (single model or ensemble); fetched to host, so sharded states work.
      epoch: finished epochs, the checkpoint's step number.
      meta: JSON-serialisable dict (the fit loop stores epoch, best metric, history, config).
      best: also write it to ``best`` (only the newest best is kept).
      keep: how many ``latest`` checkpoints to keep (2, the default, leaves an older one to
        fall back to when the newest is damaged).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    epoch = int(epoch)
    tree = jax.device_get(state_to_tree(state))
    # The JSON round trip makes the saved meta, and so its digest, exactly what restore reads.
    meta = json.loads(json.dumps({**meta, "epoch": epoch}, default=_json_default))
    meta.pop(_DIGESTS, None)
    meta[_DIGESTS] = {"state": tree_digest(tree), "meta": _meta_digest(meta)}
    for which in WHICH:
        try:
            _save_one(checkpoint_dir(workdir, which), which, tree, meta, epoch, best, keep)
        except jax.errors.JaxRuntimeError:
            raise  # the runtime's (a lost process in a multi-process save), not the disk's
        except Exception as err:  # an unwritable disk: OSError, or orbax's and tensorstore's
            # own errors around it
            raise _write_error(workdir, which, epoch, err) from err


def _write_error(workdir, which: str, epoch: int, err: BaseException) -> CheckpointWriteError:
    directory = checkpoint_dir(workdir, which)
    kept = sorted(_step_dirs(directory))
    kept_note = (f"the checkpoint of epoch {max(kept)} is intact" if kept else
                 "no earlier checkpoint was written")
    return CheckpointWriteError(
        f"could not write the checkpoint of epoch {epoch} to {directory} "
        f"({_short_error(err, directory)}); {kept_note}. Free disk space or make the folder "
        "writable, then run the same command again to resume"
    )


def _save_one(directory: Path, which: str, tree, meta, epoch: int, best: bool, keep: int):
    """Write (or only clean up) one of ``latest`` and ``best`` (see :func:`save`)."""
    steps = _step_dirs(directory)
    writing = which == "latest" or best
    stale = sorted(s for s in steps if s > epoch or (writing and s == epoch))
    if not writing and not stale:
        return
    with _manager(directory, keep if which == "latest" else 1) as mgr:
        known = set(mgr.all_steps())
        for s in stale:
            if s in known:
                mgr.delete(s)
            elif jax.process_index() == 0:
                shutil.rmtree(steps[s], ignore_errors=True)
        if not writing:
            return
        mgr.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mgr.wait_until_finished()


# ---------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------


def latest_epoch(workdir: str | os.PathLike, which: str = "latest") -> int | None:
    """The epoch of the newest complete checkpoint (not checked for damage), or None."""
    steps = _step_dirs(checkpoint_dir(workdir, which))
    return max(steps) if steps else None


def _short_error(err: BaseException, where: Path) -> str:
    """An exception in a few words: its first line without paths and tensorstore's details."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.replace(f"{where}{os.sep}", "").replace(str(where), "the checkpoint")
    text = re.sub(r"\s+in OCDBT database at .*$", "", text)
    text = text.replace('Error opening "zarr" driver: ', "")
    text = re.sub(r"Byte range \[\d+, \d+\) of ", "", text)
    if isinstance(err, json.JSONDecodeError | UnicodeDecodeError):
        text = f"garbled JSON: {text}"
    elif isinstance(err, FileNotFoundError):
        text = f"missing file: {text}"
    elif not isinstance(err, ValueError) or not text:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class _Damaged(ValueError):
    pass


def _check_files(step_dir: Path) -> None:
    """Read every stored value of the state's OCDBT database with synchronous tensorstore
    calls, and parse the JSON ones (the arrays' zarr metadata).

    Orbax notices a missing, truncated or garbled data file too, but it opens and reads all
    arrays concurrently and, on the first error, leaves the others to finish after its event
    loop has closed: each then prints an "Event loop is closed" traceback. Found here first,
    the damage costs one warning line. (Garbage inside an array's compressed bytes is left to
    orbax and the digest.) A state without OCDBT files (another layout) is left to orbax.
    """
    state = step_dir / "state"
    if not (state / "manifest.ocdbt").is_file():
        if (state / "d").is_dir() or any(state.glob("ocdbt.process_*")):
            raise _Damaged("missing file state/manifest.ocdbt")
        return
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state}/"}).result()
    keys = kv.list().result()
    if not keys:
        raise _Damaged("the state's database lists no arrays")
    reads = [(key, kv.read(key)) for key in keys]
    for key, read in reads:
        value = read.result().value
        if key.endswith((b".zarray", b".zattrs", b"zarr.json")):
            json.loads(value)


def _read(directory: Path, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read one checkpoint completely (every array into host memory) and check its digests."""
    step_dir = directory / str(step)
    for rel in ("state/_METADATA", "meta/metadata"):
        if not (step_dir / rel).is_file():
            raise _Damaged(f"missing file {rel}")
    _check_files(step_dir)
    with _manager(directory, None) as mgr:
        info = mgr.item_metadata(step)["state"]
        if info is None:
            raise _Damaged("no state metadata")
        # numpy templates: every array is read into host memory now (nothing lazy).
        template = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), info)
        out = mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()
            ),
        )
    tree = jax.tree.map(np.asarray, dict(out["state"]))
    meta = out["meta"]
    if not isinstance(meta, dict):
        raise _Damaged(f"meta is a {type(meta).__name__}, not a JSON object")
    meta = dict(meta)
    digests = meta.pop(_DIGESTS, None)
    if digests is not None:
        if not isinstance(digests, dict) or digests.get("meta") != _meta_digest(meta):
            raise _Damaged("meta does not match its SHA-256 digest")
        if digests.get("state") != tree_digest(tree):
            raise _Damaged("array data does not match its SHA-256 digest")
    if int(meta.get("epoch", step)) != step:
        raise _Damaged(f"meta says epoch {meta.get('epoch')!r}, the directory {step}")
    return tree, meta


def _candidates(workdir, which: str) -> list[Path]:
    """Checkpoint directories to try, newest first. ``latest``: the steps of both directories
    (at the same epoch ``latest`` first); ``best``: each best step, then the same epoch in
    ``latest`` (the same state)."""
    latest = _step_dirs(checkpoint_dir(workdir, "latest"))
    best = _step_dirs(checkpoint_dir(workdir, "best"))
    order = []
    if which == "latest":
        for step in sorted(set(latest) | set(best), reverse=True):
            order += [d[step] for d in (latest, best) if step in d]
    else:
        for step in sorted(best, reverse=True):
            order += [d[step] for d in (best, latest) if step in d]
    return order


def restore(
    workdir: str | os.PathLike, which: str = "latest", *, target: TrainState | None = None
) -> tuple[Any, dict[str, Any]] | None:
    """Load the newest readable ``latest`` (or ``best``) checkpoint.

    Each candidate is read in full and checked against the digests stored by :func:`save`;
    an unreadable one gets a :class:`CheckpointWarning` (its path and the error) and the next
    older one is tried. ``latest`` falls back through the epochs of both ``latest`` and
    ``best``; ``best`` through the best epoch in ``best`` and, when still kept, the same epoch
    in ``latest``.

    Args:
      workdir: run directory given to :func:`save`.
      which: ``"latest"`` or ``"best"``.
      target: a freshly created TrainState of the same model and optimizer; when given, the
        result is a TrainState, otherwise a dict of numpy arrays (``params``, ``batch_stats``,
        ``opt_state``, ``step``, ``rng`` key data), enough for evaluation or export.

    Returns:
      ``(state, meta)``, or None when there is no checkpoint.

    Raises:
      CheckpointUnreadable: checkpoints exist but none can be read (each one's error is named).
      ValueError: the checkpoint does not match ``target`` (another model or optimizer).
    """
    checkpoint_dir(workdir, which)  # checks ``which``
    candidates = _candidates(workdir, which)
    if not candidates:
        return None
    failures = []
    for path in candidates:
        try:
            tree, meta = _read(path.parent, int(path.name))
        except Exception as err:  # any read error means: this checkpoint is damaged
            failures.append((path, _short_error(err, path)))
            continue
        for bad, why in failures:
            warnings.warn(
                f"checkpoint {bad} is unreadable ({why}); using {path} (epoch {meta['epoch']})",
                CheckpointWarning,
                stacklevel=2,
            )
        if target is None:
            return tree, meta
        try:
            return tree_to_state(target, tree), meta
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    listing = "; ".join(f"{bad} ({why})" for bad, why in failures)
    raise CheckpointUnreadable(
        f"no readable checkpoint in {checkpoint_dir(workdir, which).parent}: {listing}. "
        "Move that directory away (or train with resume=False; --no-resume on the command "
        "line) to start from scratch."
    )
