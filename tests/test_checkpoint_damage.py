"""Damaged checkpoints: ``restore`` falls back to the newest readable checkpoint with one
warning line per damaged one, and ``fit`` resumed from it ends bitwise equal to an
uninterrupted run; runs killed with SIGKILL (mid-save, right after a save, at a random moment)
resume the same way.

The damage: 1,000 random bytes written over each kind of file of the newest checkpoint in
turn, a truncated file, a deleted file, garbage and edited meta JSON, the array data of another
epoch (which orbax reads without complaint: only the digest stored by ``save`` notices), an
empty step directory and an unfinished orbax temporary directory. The default run checks every
kind of damaged file through ``restore`` (each returns the fallback epoch's exact arrays) and
resumes through ``fit`` for the issue's case and the SIGKILLs (about 40 s on 2 busy cores);
``-m slow`` also resumes through ``fit`` once per damaged file (about 3 minutes).
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from tiny_data import random_dataset

from jaxcnn.train import FitConfig, checkpoint, fit
from jaxcnn.train.checkpoint import CheckpointUnreadable, CheckpointWarning


class Tiny(nn.Module):
    """Conv + BatchNorm + dropout + dense: every kind of state (params, batch_stats, optimizer
    momentum, the dropout key), compiled in seconds."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


EPOCHS = 4
CFG = FitConfig(epochs=EPOCHS, batch_size=16, eval_batch_size=10, lr=0.05, log_every=4)


TRAIN, EVAL = random_dataset(64, 0), random_dataset(20, 1)


def run(workdir, **kwargs):
    """fit, returning its result and the CheckpointWarning messages it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(Tiny(), TRAIN, EVAL, config=CFG, workdir=workdir, progress=False, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def restore(workdir, which="latest"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = checkpoint.restore(workdir, which)
    return out, [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]


def assert_same_tree(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run that keeps every epoch's checkpoint, and the trees it saved."""
    workdir = tmp_path_factory.mktemp("reference")
    cfg = dataclasses.replace(CFG, keep_checkpoints=EPOCHS)
    result = fit(Tiny(), TRAIN, EVAL, config=cfg, workdir=workdir, progress=False)
    trees = {}
    for step_dir in sorted((workdir / "checkpoints" / "latest").iterdir()):
        trees[int(step_dir.name)] = checkpoint._read(step_dir.parent, int(step_dir.name))[0]
    return workdir, result, trees


@pytest.fixture
def stopped(reference, tmp_path):
    """A run stopped after epoch 2 (keep=2): ``latest/1``, ``latest/2`` and ``best/2``."""
    src, _, _ = reference
    workdir = tmp_path / "run"
    ckpt = workdir / "checkpoints"
    for step in (1, 2):
        shutil.copytree(src / "checkpoints" / "latest" / str(step), ckpt / "latest" / str(step))
    shutil.copytree(src / "checkpoints" / "latest" / "2", ckpt / "best" / "2")
    return workdir


def files_of(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file())


def kinds_of(step_dir: Path, rng) -> list[Path]:
    """One file of each kind: every file outside the ``d/`` data folders, and one seeded
    choice inside each ``d/`` folder (their names are hashes)."""
    chosen, by_folder = [], {}
    for p in files_of(step_dir):
        if p.parent.name == "d":
            by_folder.setdefault(p.parent, []).append(p)
        else:
            chosen.append(p)
    for folder in sorted(by_folder):
        chosen.append(by_folder[folder][rng.integers(len(by_folder[folder]))])
    return chosen


def random_bytes_over(path: Path, rng, n=1000):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(int(rng.integers(0, max(size - n, 0) + 1)))
        f.write(rng.bytes(n))


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Files whose damage orbax must notice; others (commit markers, the per-process B-tree copies
# that orbax merged into state/d) may be unused by a restore, so damaging them is harmless.
MUST_NOTICE = ("meta/metadata", "state/_METADATA", "state/manifest.ocdbt")


def check_restore(workdir, trees, damaged_rel: str, expect_fallback_to):
    """restore either warns about latest/2 and returns ``expect_fallback_to``'s state, or (for
    a file a restore does not use) returns latest/2 unchanged; never other numbers."""
    (tree, meta), msgs = restore(workdir)
    bad = workdir.absolute() / "checkpoints" / "latest" / "2"
    if msgs:
        assert all("\n" not in m for m in msgs)
        assert any(m.startswith(f"checkpoint {bad} is unreadable (") for m in msgs), msgs
        assert meta["epoch"] == expect_fallback_to
        assert_same_tree(tree, trees[expect_fallback_to])
    else:
        assert not damaged_rel.endswith(MUST_NOTICE), f"damage to {damaged_rel} went unnoticed"
        assert meta["epoch"] == 2
        assert_same_tree(tree, trees[2])
    return msgs


DAMAGES = ["random_bytes", "truncate", "delete"]


def damaged_copies(stopped, tmp_path, damage):
    """Copies of the stopped run, each with one kind of file of latest/2 damaged (and the same
    damage in best/2, the same epoch): yields (file relative to the step, workdir)."""
    rng = np.random.default_rng(DAMAGES.index(damage))
    latest2 = stopped / "checkpoints" / "latest" / "2"
    for path in kinds_of(latest2, rng):
        rel = path.relative_to(latest2).as_posix()
        workdir = tmp_path / rel.replace("/", "_")
        shutil.copytree(stopped, workdir)
        target = workdir / "checkpoints" / "latest" / "2" / rel
        {"random_bytes": lambda p: random_bytes_over(p, rng), "truncate": truncate}.get(
            damage, Path.unlink
        )(target)
        twin = workdir / "checkpoints" / "best" / "2" / rel
        if target.exists():
            shutil.copyfile(target, twin)
        else:
            twin.unlink()
        yield rel, workdir


@pytest.mark.parametrize("damage", DAMAGES)
def test_each_kind_of_file_damaged_falls_back(reference, stopped, tmp_path, damage):
    """Each kind of file of latest/2 and best/2 damaged in turn: restore falls back to
    latest/1 with a warning naming both, or the file was not needed."""
    _, _, trees = reference
    noticed = 0
    for rel, workdir in damaged_copies(stopped, tmp_path, damage):
        msgs = check_restore(workdir, trees, rel, expect_fallback_to=1)
        if msgs:
            noticed += 1
            assert len(msgs) == 2
            assert msgs[1].startswith(f"checkpoint {workdir.absolute()}/checkpoints/best/2 ")
            assert msgs[-1].endswith(f"using {workdir.absolute()}/checkpoints/latest/1 (epoch 1)")
    assert noticed >= len(MUST_NOTICE)


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_each_kind_of_file_damaged_resumes_like_uninterrupted(reference, stopped, tmp_path, damage):
    """The same damage, resumed through fit (one fit per file, about a minute per damage
    kind): the final params equal the uninterrupted run's."""
    _, full, _ = reference
    for rel, workdir in damaged_copies(stopped, tmp_path, damage):
        resumed, msgs = run(workdir)
        bad = f"checkpoint {workdir.absolute()}/checkpoints/latest/2 is unreadable ("
        assert (msgs and msgs[0].startswith(bad)) or not rel.endswith(MUST_NOTICE), rel
        assert_same_tree(resumed.state.params, full.state.params)
        assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def test_array_data_of_another_epoch_is_caught_by_the_digest(reference, stopped):
    """latest/2's arrays replaced by epoch 1's: orbax reads them without error; the SHA-256
    digest in the meta does not match, so restore uses best/2 (the same epoch)."""
    _, _, trees = reference
    state = stopped / "checkpoints" / "latest" / "2" / "state"
    shutil.rmtree(state)
    shutil.copytree(stopped / "checkpoints" / "latest" / "1" / "state", state)
    (tree, meta), msgs = restore(stopped)
    assert len(msgs) == 1
    assert "array data does not match its SHA-256 digest" in msgs[0]
    assert msgs[0].endswith(f"using {stopped.absolute()}/checkpoints/best/2 (epoch 2)")
    assert meta["epoch"] == 2 and "_sha256" not in meta
    assert_same_tree(tree, trees[2])


@pytest.mark.parametrize(
    ("meta_text", "reason"),
    [
        (b"\x00\xff garbage", "garbled JSON"),
        (b'{"epoch": 2, "hist', "garbled JSON"),
        (b"[1, 2, 3]", "meta is a list"),
        (None, "meta does not match its SHA-256 digest"),  # valid JSON, one number edited
    ],
)
def test_bad_meta(reference, stopped, meta_text, reason):
    _, _, trees = reference
    shutil.rmtree(stopped / "checkpoints" / "best")
    path = stopped / "checkpoints" / "latest" / "2" / "meta" / "metadata"
    if meta_text is None:
        meta = json.loads(path.read_text())
        meta["history"][0]["train_loss"] += 1.0
        meta_text = json.dumps(meta).encode()
    path.write_bytes(meta_text)
    (tree, meta), msgs = restore(stopped)
    assert len(msgs) == 1 and reason in msgs[0], msgs
    assert meta["epoch"] == 1
    assert_same_tree(tree, trees[1])


def test_checkpoints_without_digests_still_restore(reference, stopped):
    """Checkpoints written before the digests existed are read in full, not verified."""
    _, _, trees = reference
    path = stopped / "checkpoints" / "latest" / "2" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta["_sha256"]
    path.write_text(json.dumps(meta))
    (tree, meta), msgs = restore(stopped)
    assert msgs == [] and meta["epoch"] == 2
    assert_same_tree(tree, trees[2])


def test_empty_step_dir_and_leftover_tmp_dir(reference, stopped):
    """An unfinished orbax directory is ignored (no warning); an empty latest/2 is skipped."""
    _, _, trees = reference
    latest = stopped / "checkpoints" / "latest"
    tmp = latest / "3.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(latest / "2", tmp)
    random_bytes_over(tmp / "meta" / "metadata", np.random.default_rng(0))
    (tree, meta), msgs = restore(stopped)
    assert msgs == [] and meta["epoch"] == 2
    shutil.rmtree(latest / "2")
    (latest / "2").mkdir()
    (tree, meta), msgs = restore(stopped)
    assert len(msgs) == 1 and "missing file" in msgs[0] and meta["epoch"] == 2  # best/2
    assert_same_tree(tree, trees[2])
    assert checkpoint.latest_epoch(stopped) == 2  # a directory listing; restore checks


def test_best_falls_back_to_the_same_epoch_in_latest(reference, stopped):
    _, _, trees = reference
    random_bytes_over(
        stopped / "checkpoints" / "best" / "2" / "state" / "_METADATA", np.random.default_rng(1)
    )
    (tree, meta), msgs = restore(stopped, "best")
    assert len(msgs) == 1 and "/checkpoints/best/2 is unreadable" in msgs[0]
    assert msgs[0].endswith("checkpoints/latest/2 (epoch 2)")
    assert_same_tree(tree, trees[2])
    shutil.rmtree(stopped / "checkpoints" / "latest" / "2")
    with pytest.raises(CheckpointUnreadable, match=r"best/2 \(garbled JSON"):
        restore(stopped, "best")
    # resume ignores the damaged best: latest/1 is the newest readable state
    (tree, meta), msgs = restore(stopped)
    assert len(msgs) == 1 and meta["epoch"] == 1


def test_resume_after_damage_equals_uninterrupted_run(reference, stopped):
    """The issue's case: 1,000 random bytes over the array data of latest/2 (and best/2 gone):
    one warning line naming latest/2, resumed from latest/1, same final params."""
    _, full, _ = reference
    shutil.rmtree(stopped / "checkpoints" / "best")
    latest2 = stopped / "checkpoints" / "latest" / "2"
    data_files = [p for p in files_of(latest2 / "state") if p.parent.name == "d"]
    biggest = max(data_files, key=lambda p: p.stat().st_size)
    random_bytes_over(biggest, np.random.default_rng(2))
    tmp = stopped / "checkpoints" / "latest" / "3.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(latest2 / "meta", tmp / "meta")  # an unfinished save of a killed run
    resumed, msgs = run(stopped)
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert msgs[0].startswith(f"checkpoint {latest2.absolute()} is unreadable (")
    assert msgs[0].endswith(f"using {stopped.absolute()}/checkpoints/latest/1 (epoch 1)")
    assert [r["epoch"] for r in resumed.history] == list(range(1, EPOCHS + 1))
    assert_same_tree(resumed.state.params, full.state.params)
    assert_same_tree(resumed.state.opt_state, full.state.opt_state)
    for key in ("train_loss", "eval_accuracy"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history]
    # the damaged epoch was written again, readable now; the unfinished save is gone
    (_, meta), msgs = restore(stopped)
    assert msgs == [] and meta["epoch"] == EPOCHS
    assert not tmp.exists()


def test_nothing_readable_is_a_clear_error_not_a_silent_restart(stopped):
    for step_dir in (stopped / "checkpoints").glob("*/*"):
        truncate(step_dir / "meta" / "metadata")
    with pytest.raises(CheckpointUnreadable) as err:
        run(stopped)
    msg = str(err.value)
    for name in ("latest/2", "latest/1", "best/2"):
        assert f"checkpoints/{name} (garbled JSON" in msg
    assert "resume=False" in msg and "Traceback" not in msg
    assert checkpoint.restore(stopped.parent / "none") is None  # no checkpoint at all: fine


# ---------------------------------------------------------------------------------------------
# SIGKILL at seeded points, then resume
# ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import orbax.checkpoint as ocp
    from test_checkpoint_damage import CFG, EVAL, TRAIN, Tiny
    from jaxcnn.train import fit

    workdir, kill_in_save = sys.argv[1], int(sys.argv[2])
    if kill_in_save:
        # SIGKILL in the middle of writing that epoch's checkpoint (arrays being written,
        # meta not yet, nothing renamed into place).
        for name in ("save", "async_save"):
            original = getattr(ocp.JsonCheckpointHandler, name)

            def patched(self, directory, *a, _original=original, **kw):
                args = kw.get("args", a[1] if len(a) > 1 else None)
                if args is not None and args.item.get("epoch") == kill_in_save:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _original(self, directory, *a, **kw)

            setattr(ocp.JsonCheckpointHandler, name, patched)
    fit(Tiny(), TRAIN, EVAL, config=CFG, workdir=workdir, progress=False)
    """
)


def _child(workdir, kill_in_save=0):
    code = CHILD.format(tests=str(Path(__file__).parent))
    log = open(workdir.parent / f"child_{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    with log:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(workdir), str(kill_in_save)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )


def _wait_for(proc, condition, timeout=300.0):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def _logs(folder):
    return "\n".join(p.read_text()[-2000:] for p in sorted(folder.glob("child_*.log")))


def test_sigkill_at_seeded_points_then_resume(reference, tmp_path):
    """One run killed three times: inside the save of epoch k1, the moment latest/k2 appears
    (before best is written), and after a seeded delay; the last resume runs to the end and
    matches the uninterrupted run bitwise."""
    _, full, _ = reference
    rng = np.random.default_rng(10)
    workdir = tmp_path / "killed"
    latest = workdir / "checkpoints" / "latest"

    k1 = int(rng.integers(1, 3))  # 1 or 2
    proc = _child(workdir, kill_in_save=k1)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, _logs(tmp_path)
    assert checkpoint.latest_epoch(workdir) == (None if k1 == 1 else k1 - 1)
    assert any(".orbax-checkpoint-tmp" in p.name for p in latest.iterdir())  # left mid-write

    k2 = int(rng.integers(k1, EPOCHS))  # an epoch before the last
    proc = _child(workdir)
    assert _wait_for(proc, lambda: (latest / str(k2)).is_dir()), "run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    start = checkpoint.latest_epoch(workdir)
    proc = _child(workdir)
    # wait until this run is training (its first checkpoint appears), then a seeded delay
    _wait_for(proc, lambda: checkpoint.latest_epoch(workdir) != start)
    time.sleep(float(rng.uniform(0.0, 0.3)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)

    resumed, msgs = run(workdir)
    assert msgs == []  # a kill never leaves a damaged checkpoint behind
    assert [r["epoch"] for r in resumed.history] == list(range(1, EPOCHS + 1))
    assert_same_tree(resumed.state.params, full.state.params)
    assert_same_tree(resumed.state.batch_stats, full.state.batch_stats)
    assert not any(".orbax-checkpoint-tmp" in p.name for p in latest.iterdir())


def test_another_model_is_a_mismatch_not_damage(stopped):
    """A readable checkpoint of another model raises the mismatch error at once; it is not
    mistaken for damage and skipped."""
    from jaxcnn.train import create_train_state, make_optimizer

    tx = make_optimizer("sgd", 0.05, schedule="constant", total_steps=4)
    other = create_train_state(Tiny(num_classes=4), tx, jax.random.key(0), (1, 8, 8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        with pytest.raises(ValueError, match=r"latest/2: checkpoint (does not match|array sh)"):
            checkpoint.restore(stopped, target=other)
