"""A checkpoint that cannot be written (no space left on the device, a read-only folder) stops
the run with one line naming the folder and the cause, and leaves the checkpoints written before
it intact: the run resumes from them once the disk is fixed. The writer is patched to fail
(root, which runs CI, may write into read-only folders)."""

import dataclasses
import errno

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_checkpoint_damage import CFG, EVAL, TRAIN, Tiny, assert_same_tree

from experiments import _cli
from jaxcnn.train import checkpoint, fit
from jaxcnn.train.checkpoint import CheckpointWriteError


def _failing_save(error):
    def save(self, step, *args, **kwargs):
        raise error
    return save


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (PermissionError(errno.EROFS, "Read-only file system"), "Read-only file system"),
])
def test_a_failed_write_keeps_the_last_checkpoint_and_says_why(tmp_path, monkeypatch, capsys,
                                                                error, cause):
    more = dataclasses.replace(CFG, epochs=3)
    done = fit(Tiny(), TRAIN, EVAL, config=more, workdir=tmp_path, progress=False,
               verbose=False, stop_after_epoch=2)
    before, _ = checkpoint.restore(tmp_path)

    monkeypatch.setattr(ocp.CheckpointManager, "save", _failing_save(error))
    with pytest.raises(CheckpointWriteError) as info:
        fit(Tiny(), TRAIN, EVAL, config=more, workdir=tmp_path, progress=False, verbose=False)
    message = str(info.value)
    assert message.startswith("could not write the checkpoint of epoch 3 to "
                              f"{tmp_path / 'checkpoints' / 'latest'} (")
    assert cause in message and "the checkpoint of epoch 2 is intact" in message
    assert "\n" not in message

    after, meta = checkpoint.restore(tmp_path)  # epoch 2, exactly as written
    assert meta["epoch"] == 2
    assert_same_tree(after, before)
    assert_same_tree(after["params"], done.state.params)

    # Through a command: one line, exit status 2.
    def main(argv):
        fit(Tiny(), TRAIN, EVAL, config=more, workdir=tmp_path, progress=False, verbose=False)

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _cli.run(main, [])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not write the checkpoint of epoch 3") and cause in err
    assert err.count("\n") == 1

    # Disk fixed: the same call resumes from epoch 2 and finishes.
    monkeypatch.undo()
    result = fit(Tiny(), TRAIN, EVAL, config=more, workdir=tmp_path, progress=False,
                 verbose=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert np.isfinite(result.history[-1]["train_loss"])
