"""Bad input at every entry point (issue 23, item 5): the one table of the user-facing mistakes.

Every command answers a bad flag, folder, file or download with one ``error:`` line on stderr
and exit status 2, never a traceback: argparse's own one-line error while parsing, or
``error: <message>`` from :func:`experiments._cli.run` (``jaxcnn-predict`` prints its own); the
library raises a ``ValueError`` / ``FileNotFoundError`` whose message names the bad value and
the fix. :data:`CASES` lists them by family (the id's prefix); each row asserts the exit status
(or the exception) and a regex of the message.

How they run, fast (each case fails before anything trains or compiles):

* commands in-process: ``experiments._cli.run(<lesson>.main, argv)`` (what ``python -m
  experiments.<lesson>`` runs) and ``jaxcnn.predict.main(argv)`` (``jaxcnn-predict``), with
  pytest's ``capsys``; an exception that escapes them is a traceback and fails the case;
* one real ``python -m experiments.cifar10`` on 2 fake CPU devices (a batch the devices cannot
  split; the device count is fixed when JAX starts);
* the library calls directly.

Data never comes from the network: CIFAR-10 is a tiny archive in the official layout
(``tests/fake_archives.py``) placed in ``<data-dir>/downloads/`` (used after its sha256 check),
or a tiny prepared TFDS dir (``tests/test_tfds_damaged_shard.py``); every URL is a
127.0.0.1 one (a closed port unless a case serves the archive), HOME and the caches are
under tmp. Message texts may go on over more lines (the download errors list their fixes),
but exactly one line is the ``error:`` line. A damaged checkpoint with an intact older one is
not an error: ``restore`` falls back to it with one warning line naming the damaged one (the
``checkpoint-newest-truncated-api`` row); with none intact, the run stops with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from device_env import fake_cpu_devices
from fake_archives import closed_port_url, make_cifar10_archive, serve_directory
from PIL import Image
from test_image_folder import _truncated_jpeg
from test_tfds_damaged_shard import make_prepared_cifar10
from tiny_data import random_dataset, tiny_cnn3

from experiments import (
    _cli,
    architectures,
    cifar10,
    conv_math,
    custom,
    flowers,
    from_scratch,
    speedrun,
)
from experiments.bench import __main__ as bench
from jaxcnn import predict
from jaxcnn.train.checkpoint import CheckpointWarning

CIFAR = "cifar-10-binary.tar.gz"
COMMANDS = {m.__name__.split(".")[-1]: m for m in (architectures, cifar10, conv_math, custom,
                                                    flowers, from_scratch, speedrun)}
COMMANDS["bench"] = bench
SUBPROCESS = "cifar10@2devices"  # python -m experiments.cifar10 on 2 fake CPU devices


# ---------------------------------------------------------------------------------------------
# What the cases build: data dirs, image folders, bundles, checkpoints, served archives
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny CIFAR-10 archive in the official layout (30 train, 8 test images) and its sha256."""
    path = tmp_path_factory.mktemp("served") / CIFAR
    return path, make_cifar10_archive(path, per_batch=6, test=8, seed=0)["sha256"]


@pytest.fixture(scope="module")
def bundle_src(tmp_path_factory):
    """A tiny mlp bundle (3 classes, 6x6 RGB); zero weights from shapes alone: nothing compiles."""
    import jax
    import jax.numpy as jnp

    from jaxcnn import export, models

    model = models.create("mlp", num_classes=3, hidden=(4,))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)), train=False))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return export.save(tmp_path_factory.mktemp("bundle") / "bundle", model_name="mlp",
                       model_options={"hidden": (4,)}, variables=variables,
                       class_names=["ant", "bee", "cat"],
                       preprocessing=dict(input_size=(6, 6), mean=(0.5,) * 3, std=(0.25,) * 3))


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Env:
    """One case's workspace under tmp: builders for its inputs, the environment, and ``vars``
    (paths a pattern names as ``{name}``, regex-escaped when filled in)."""

    def __init__(self, tmp: Path, monkeypatch, stack: ExitStack, archive, bundle_src: Path):
        self.tmp, self.monkeypatch, self.stack = tmp, monkeypatch, stack
        self.archive, self.sha256 = archive
        self.bundle_src = bundle_src
        self.vars: dict[str, object] = {}
        self._count = 0

    def new(self, name: str) -> Path:
        """A fresh path (not created) under tmp."""
        self._count += 1
        return self.tmp / f"{self._count}_{name}"

    def a_file(self, name: str = "notes.txt") -> str:
        path = self.new(name)
        path.write_text("a file, not a folder\n")
        self.vars["file"] = path
        return str(path)

    # CIFAR-10 ------------------------------------------------------------------------------

    def cifar_dir(self) -> str:
        """A data dir holding the tiny official archive in downloads/ (no download needed)."""
        folder = self.new("cifar") / "downloads"
        folder.mkdir(parents=True)
        shutil.copyfile(self.archive, folder / CIFAR)
        return str(folder.parent)

    def cifar10(self, *extra: str) -> list[str]:
        """argv of a quick cifar10 run on the tiny archive (``extra`` overrides, last wins)."""
        workdir = self.new("run")
        self.vars["workdir"] = workdir
        return ["--data-dir", self.cifar_dir(), "--models", "mlp", "--workdir", str(workdir),
                "--no-figures", "--no-progress", *extra]

    def tfds_dir(self, damaged: bool = False) -> str:
        """A prepared TFDS cifar10 'train' split (shards of 3 and 2 examples); ``damaged``: the
        second shard truncated."""
        data_dir = self.new("tfds")
        shards = make_prepared_cifar10(data_dir)
        if damaged:
            shards[1].write_bytes(shards[1].read_bytes()[:100])
            self.vars["shard"] = shards[1]
        return str(data_dir)

    def download(self, url: str | None = None, sha256: str | None = None) -> list[str]:
        """``--data-dir`` of an empty folder (so the archive is downloaded), after pointing
        ``JAXCNN_CIFAR10_URL`` / ``_SHA256`` at ``url`` / ``sha256`` ("": unset)."""
        for name, value in (("URL", url), ("SHA256", sha256)):
            if value == "":
                self.monkeypatch.delenv(f"JAXCNN_CIFAR10_{name}")
            elif value is not None:
                self.monkeypatch.setenv(f"JAXCNN_CIFAR10_{name}", value)
        return ["--data-dir", str(self.new("empty_data"))]

    def mirror(self, path: str = CIFAR) -> str:
        """Serve the archive's folder on 127.0.0.1 for this case; returns the URL of ``path``."""
        base = self.stack.enter_context(serve_directory(self.archive.parent))
        return f"{base}/{path}"

    # Image folders and images ----------------------------------------------------------------

    def folder(self, layout: dict[str, tuple[str, ...]]) -> str:
        """An image folder: ``{"cat": ("png", "png"), "dog": ("corrupt",)}``; a key may be a
        path (``"train/cat"``). Kinds: png, corrupt (not an image), half (a JPEG cut in half),
        txt (not an image file)."""
        root = self.new("photos")
        root.mkdir()
        for i, (cls, kinds) in enumerate(layout.items()):
            (root / cls).mkdir(parents=True, exist_ok=True)
            for j, kind in enumerate(kinds):
                self.image(kind, root / cls / f"{j}", seed=10 * i + j)
        self.vars["root"] = root
        return str(root)

    def image(self, kind: str, stem: Path | None = None, seed: int = 0) -> str:
        stem = stem or self.new("image")
        if kind == "png":
            path = _png(stem.with_suffix(".png"), seed)
        elif kind == "corrupt":
            path = stem.with_suffix(".jpg")
            path.write_bytes(b"this is not a picture")
        elif kind == "half":
            path = _truncated_jpeg(stem.with_name(stem.name + "_half.jpg"),
                                   np.random.default_rng(seed))
        elif kind == "txt":
            path = stem.with_suffix(".txt")
            path.write_text("not an image")
        else:  # missing
            path = stem.with_suffix(".png")
        self.vars[kind] = path
        return str(path)

    # Bundles -----------------------------------------------------------------------------------

    def bundle(self, damage: Callable[[Path], None] | None = None) -> str:
        """A copy of the tiny bundle, damaged by ``damage(folder)``."""
        path = self.new("bundle")
        shutil.copytree(self.bundle_src, path)
        if damage is not None:
            damage(path)
        self.vars["bundle"] = path
        return str(path)

    def predict(self, damage=None, image: str = "png") -> list[str]:
        return [self.bundle(damage), self.image(image)]

    # Checkpoints -------------------------------------------------------------------------------

    def checkpoints(self, workdir: Path, epochs=(1,), truncated=(1,)) -> Path:
        """Checkpoints of ``epochs`` in ``workdir`` (a small state, written by
        ``jaxcnn.train.checkpoint.save``), the meta file of each of ``truncated`` cut in half."""
        import jax

        from jaxcnn.train import checkpoint
        from jaxcnn.train.state import TrainState

        zeros = np.zeros(2, np.float32)
        state = TrainState(step=np.zeros((), np.int32), params={"w": zeros},
                           batch_stats={"m": zeros}, opt_state={"v": zeros},
                           rng=jax.random.key(0), apply_fn=None, tx=None)
        for epoch in epochs:
            checkpoint.save(workdir, state, epoch=epoch, meta={"history": []})
        for epoch in truncated:
            step = workdir.absolute() / "checkpoints" / "latest" / str(epoch)
            _half(step / "meta" / "metadata")
            self.vars[f"epoch{epoch}"] = step
        return workdir


@pytest.fixture
def env(tmp_path, monkeypatch, archive, bundle_src):
    """Everything under tmp (cwd, HOME, caches); CIFAR-10 and tf_flowers URLs on a closed
    127.0.0.1 port (so a missing archive fails at once, offline), with the checksum of the tiny
    archive; no proxy."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "TFDS_DATA_DIR", "JAXCNN_TRACEBACK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXCNN_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.setenv("JAXCNN_ONEDNN", "0")  # no native build in the fresh cache dir
    monkeypatch.setenv("JAXCNN_CIFAR10_URL", closed_port_url(f"/{CIFAR}"))
    monkeypatch.setenv("JAXCNN_CIFAR10_SHA256", archive[1])
    monkeypatch.setenv("JAXCNN_TF_FLOWERS_URL", closed_port_url("/flower_photos.tgz"))
    monkeypatch.setenv("JAXCNN_TF_FLOWERS_SHA256", "1" * 64)
    monkeypatch.chdir(tmp_path)  # default --workdir runs/<lesson> lands here
    with ExitStack() as stack:
        yield Env(tmp_path, monkeypatch, stack, archive, bundle_src)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """``entry``: a command of :data:`COMMANDS`, ``predict``, :data:`SUBPROCESS` or ``api``.
    ``make(env)``: the argv, or for ``api`` a call without arguments. ``expect``: the exit
    status, or the exception (or warning) class. ``pattern``: a regex searched in stderr / the
    message; ``{name}`` is ``env.vars[name]``, regex-escaped."""

    entry: str
    make: Callable
    expect: int | type
    pattern: str


def cli(family: str, name: str, entry: str, make, pattern: str, expect=2):
    return pytest.param(Case(entry, make, expect, pattern), id=f"{family}-{name}")


def api(family: str, name: str, make, exc: type, pattern: str):
    return cli(family, name, "api", make, pattern, exc)


def _edit_json(**changes):
    """A damage: bundle.json with ``changes`` (a value of None deletes the key)."""
    def damage(path: Path):
        info = json.loads((path / "bundle.json").read_text())
        for key, value in changes.items():
            if value is None:
                info.pop(key)
            else:
                info[key] = value
        (path / "bundle.json").write_text(json.dumps(info))
    return damage


def _load_tfds(split: str, data_dir):
    from jaxcnn.data import load_tfds

    return lambda: load_tfds("cifar10", split, data_dir=data_dir, progress=False)


def _fit(workdir, **config):
    """fit of the tiny cnn3 on 16 random images; the FitConfig is made inside the call."""
    from jaxcnn.train import FitConfig, fit

    def call():
        cfg = FitConfig(**{"epochs": 1, "batch_size": 8, **config})
        return fit(tiny_cnn3(), random_dataset(16, 0), None, config=cfg, workdir=workdir,
                   progress=False)
    return call


def _restore(workdir):
    from jaxcnn.train import checkpoint

    return lambda: checkpoint.restore(workdir)


def _api(module: str, name: str, *args, **kwargs):
    """``module.name(*args, **kwargs)``, imported when called."""
    import importlib

    return lambda: getattr(importlib.import_module(module), name)(*args, **kwargs)


BAD_SPLIT = r"argument --train-split: bad split 'train\[:abc\]'"
ARGPARSE = r"^python -m experiments\.{}: error: argument {}: expected {}, got '?{}'?"
NOT_INT = "an integer >= 1"
NOT_POSITIVE = "a number > 0"

CASES = [
    # splits ----------------------------------------------------------------------------------
    cli("split", "malformed", "cifar10", lambda e: ["--train-split", "train[:abc]"], BAD_SPLIT),
    cli("split", "malformed-eval", "speedrun", lambda e: ["--eval-split", "test[1.5:]"],
         r"argument --eval-split: bad split 'test\[1\.5:\]'"),
    cli("split", "unknown-name", "cifar10", lambda e: e.cifar10("--train-split", "trian"),
         r"^error: 'cifar10' has no split 'trian': available splits are \['train', 'test'\]"),
    cli("split", "empty", "cifar10", lambda e: e.cifar10("--train-split", "train[:0]"),
         r"^error: split 'train\[:0\]' selects no examples of cifar10 \('train': 30 examples\); "
         r"pass a slice that holds some"),
    cli("split", "empty-eval", "cifar10", lambda e: e.cifar10("--eval-split", "test[8:]"),
         r"^error: split 'test\[8:\]' selects no examples of cifar10 \('test': 8 examples\)"),
    cli("split", "past-the-end", "cifar10",
         lambda e: e.cifar10("--train-split", "train[100:200]"), r"^error: .*train\[100:200\]"),
    cli("split", "overlap-warned", "cifar10",
         lambda e: e.cifar10("--train-split", "train", "--eval-split", "train[10:]"),
         r"(?s)^warning: --train-split 'train' and --eval-split 'train\[10:\]' overlap.*\n"
         r"error: --batch-size 128 is larger than the training set \(30 images\)"),
    api("split", "malformed-api", lambda e: _load_tfds("train[:abc]", e.new("data")), ValueError,
        r"^bad split string 'train\[:abc\]' .*expected 'NAME' or 'NAME\[FROM:TO\]'"),
    api("split", "empty-api", lambda e: _load_tfds("train[5:]", e.tfds_dir()), ValueError,
        r"^split 'train\[5:\]' selects no examples of cifar10 \('train': 5 examples\)"),
    api("split", "unknown-name-api", lambda e: _load_tfds("validation", e.cifar_dir()),
        FileNotFoundError, r"^'cifar10' has no split 'validation'"),
    # batch sizes -------------------------------------------------------------------------------
    cli("batch", "zero", "cifar10", lambda e: ["--batch-size", "0"],
         ARGPARSE.format("cifar10", "--batch-size", NOT_INT, "0")),
    cli("batch", "negative", "cifar10", lambda e: ["--batch-size", "-8"],
         ARGPARSE.format("cifar10", "--batch-size", NOT_INT, "-8")),
    cli("batch", "not-a-number", "from_scratch", lambda e: ["--batch-size", "x"],
         ARGPARSE.format("from_scratch", "--batch-size", NOT_INT, "x")),
    cli("batch", "bench-zero", "bench", lambda e: ["train", "--batch-sizes", "128,0"],
         r"^python -m experiments\.bench train: error: argument --batch-sizes: expected an "
         r"integer >= 1, got 0"),
    cli("batch", "larger-than-data", "cifar10", lambda e: e.cifar10("--batch-size", "1000"),
         r"^error: --batch-size 1000 is larger than the training set \(30 images\); pass "
         r"--batch-size 30 or less"),
    cli("batch", "not-divisible-by-devices", SUBPROCESS,
         lambda e: e.cifar10("--batch-size", "7", "--epochs", "1"),
         r"^error: batch_size 7 is not divisible by the 2 devices of the mesh; use a multiple "
         r"of 2 \(e\.g\. 6 or 8\)"),
    api("batch", "zero-api", lambda e: _fit(e.new("run"), batch_size=0), ValueError,
        r"^FitConfig\.batch_size must be a positive int, got 0"),
    api("batch", "larger-than-data-api", lambda e: _fit(e.new("run"), batch_size=64), ValueError,
        r"^batch_size 64 is larger than the training set \(16 examples\)"),
    # learning rates and other numbers ------------------------------------------------------
    cli("number", "lr-negative", "cifar10", lambda e: ["--lr", "-0.1"],
         ARGPARSE.format("cifar10", "--lr", NOT_POSITIVE, "-0.1")),
    cli("number", "lr-zero", "from_scratch", lambda e: ["--lr", "0"],
         ARGPARSE.format("from_scratch", "--lr", NOT_POSITIVE, "0")),
    cli("number", "lr-nan", "cifar10", lambda e: ["--transfer-lr", "nan"],
         ARGPARSE.format("cifar10", "--transfer-lr", NOT_POSITIVE, "nan")),
    cli("number", "smoothing-one", "cifar10", lambda e: ["--label-smoothing", "1"],
         ARGPARSE.format("cifar10", "--label-smoothing", r"a number in \[0, 1\)", "1")),
    cli("number", "smoothing-negative", "cifar10", lambda e: ["--label-smoothing", "-0.1"],
         ARGPARSE.format("cifar10", "--label-smoothing", r"a number in \[0, 1\)", "-0.1")),
    cli("number", "epochs-zero", "cifar10", lambda e: ["--epochs", "0"],
         ARGPARSE.format("cifar10", "--epochs", NOT_INT, "0")),
    cli("number", "weight-decay-negative", "cifar10", lambda e: ["--weight-decay", "-1"],
         ARGPARSE.format("cifar10", "--weight-decay", "a number >= 0", "-1")),
    cli("number", "limit-train-zero", "architectures", lambda e: ["--limit-train", "0"],
         ARGPARSE.format("architectures", "--limit-train", NOT_INT, "0")),
    cli("number", "val-fraction-above-one", "flowers", lambda e: ["--val-fraction", "1.5"],
         ARGPARSE.format("flowers", "--val-fraction",
                         r"a fraction between 0 and 1 \(exclusive\)", "1.5")),
    cli("number", "fine-tune-epochs-negative", "custom",
         lambda e: ["--data-dir", "x", "--fine-tune-epochs", "-1"],
         ARGPARSE.format("custom", "--fine-tune-epochs", "an integer >= 0", "-1")),
    cli("number", "dpi-zero", "conv_math", lambda e: ["--dpi", "0"],
         ARGPARSE.format("conv_math", "--dpi", NOT_INT, "0")),
    cli("number", "seeds-list", "speedrun", lambda e: ["--seeds", "0,x"],
         r"^error: --seeds: expected distinct integers >= 0 separated by commas, got '0,x'"),
    cli("number", "widths", "speedrun", lambda e: ["--widths", "32,64"],
         r"argument --widths: expected three positive integers like 64,256,256, got '32,64'"),
    api("number", "lr-negative-api", lambda e: _fit(e.new("run"), lr=-0.1), ValueError,
        r"^FitConfig\.lr must be positive, got -0\.1"),
    api("number", "smoothing-api", lambda e: _fit(e.new("run"), label_smoothing=1.0),
        ValueError, r"^label_smoothing must be in \[0, 1\), got 1\.0"),
    api("number", "epochs-zero-api", lambda e: _fit(e.new("run"), epochs=0), ValueError,
        r"^FitConfig\.epochs must be a positive int, got 0"),
    # models ----------------------------------------------------------------------------------
    cli("model", "unknown", "cifar10", lambda e: ["--models", "nope"],
         r"^error: --models: unknown model\(s\) \['nope'\]; available: .*cnn3"),
    cli("model", "empty-list", "cifar10", lambda e: ["--models", ","],
         r"^error: --models: unknown model\(s\) \[','\]; available:"),
    cli("model", "unknown-architectures", "architectures", lambda e: ["--models", "resnet21"],
         r"^error: --models: unknown model\(s\) \['resnet21'\]; available:"),
    cli("model", "unknown-scratch-model", "flowers",
         lambda e: ["--modes", "scratch", "--scratch-model", "nope"],
         r"^error: --scratch-model: unknown model 'nope'; available:"),
    cli("model", "unknown-mode", "flowers", lambda e: ["--modes", "finetune"],
         r"^error: --modes: unknown mode\(s\) \['finetune'\]; choose from"),
    cli("model", "unknown-rung", "speedrun", lambda e: ["--ablate", "--rungs", "nope"],
         r"^error: --rungs: unknown rung\(s\) \['nope'\]; choose from baseline"),
    cli("model", "bench-unknown", "bench", lambda e: ["train", "--models", "nope"],
         r"^error: --models: unknown model\(s\) \['nope'\]; available:"),
    cli("model", "option-without-value", "bench", lambda e: ["train", "--model-option", "dense"],
         r"^error: --model-option must be key=value or model\.key=value, got 'dense'"),
    cli("model", "option-nobody-takes", "bench",
         lambda e: ["train", "--models", "cnn3", "--model-option", "nope=1"],
         r"^error: --model-option nope: none of the models \['cnn3'\] accepts it"),
    cli("model", "option-of-one-model", "bench",
         lambda e: ["train", "--models", "cnn3", "--model-option", "cnn3.nope=1"],
         r"^error: unknown option\(s\) \['nope'\] for model 'cnn3'; accepted options:"),
    cli("model", "option-conv-impl", "bench",
         lambda e: ["train", "--model-option", "conv_impl=lax"],
         r"^error: --model-option conv_impl=lax: the models have no conv_impl; pick the kernels "
         r"with --backend"),
    api("model", "unknown-api", lambda e: _api("jaxcnn.models", "create", "nope"), ValueError,
        r"^unknown model 'nope'; available models: .*cnn3"),
    api("model", "option-api", lambda e: _api("jaxcnn.models", "create", "cnn3", nope=1),
        ValueError, r"^unknown option\(s\) \['nope'\] for model 'cnn3'; accepted options:"),
    # folders ---------------------------------------------------------------------------------
    cli("folder", "missing", "custom", lambda e: ["--data-dir", str(e.new("nowhere"))],
         r"^error: image folder .*nowhere does not exist; expected PATH/<class>/<images>"),
    cli("folder", "flag-missing", "custom", lambda e: [],
         r"^python -m experiments\.custom: error: the following arguments are required: "
         r"--data-dir"),
    cli("folder", "is-a-file", "custom", lambda e: ["--data-dir", e.a_file()],
         r"^error: {file} is a file, not an image folder"),
    cli("folder", "one-class", "custom",
         lambda e: ["--data-dir", e.folder({"cat": ("png", "png")})],
         r"^error: {root} holds 1 class folder\(s\) \['cat'\]; a classifier needs at least 2"),
    cli("folder", "no-images", "flowers", lambda e: ["--data-dir", e.folder({})],
         r"^error: {root} holds 0 class folder\(s\) \[\]; a classifier needs at least 2"),
    cli("folder", "empty-class", "custom",
         lambda e: ["--data-dir", e.folder({"cat": ("png",), "dog": ("txt",)})],
         r"^error: class folder\(s\) \['dog'\] in {root} hold no readable images"),
    cli("folder", "val-class-not-in-train", "custom",
         lambda e: ["--data-dir", e.folder({"train/cat": ("png",), "train/dog": ("png",),
                                            "val/eel": ("png",)})],
         r"^error: {root}/val has class folder\(s\) \['eel'\] that {root}/train lacks"),
    cli("folder", "missing-flowers", "flowers", lambda e: ["--data-dir", str(e.new("nowhere"))],
         r"^error: image folder .*nowhere does not exist"),
    api("folder", "missing-api",
        lambda e: _api("jaxcnn.data", "load_image_folder", e.new("nowhere")),
        FileNotFoundError, r"^image folder .*nowhere does not exist"),
    api("folder", "image-size-api",
        lambda e: _api("jaxcnn.data", "load_image_folder",
                       e.folder({"a": ("png",), "b": ("png",)}), image_size=(0, 8),
                       progress=False),
        ValueError, r"^image_size must be \(height, width\) positive ints, got \(0, 8\)"),
    # images ----------------------------------------------------------------------------------
    cli("image", "corrupt-in-folder", "custom",
         lambda e: ["--data-dir", e.folder({"cat": ("png",), "dog": ("corrupt",)})],
         r"^error: class folder\(s\) \['dog'\] in {root} hold no readable images"),
    cli("image", "truncated-in-folder", "flowers",
         lambda e: ["--data-dir", e.folder({"cat": ("png",), "dog": ("half",)}),
                    "--image-size", "8"],
         r"^error: class\(es\) \['dog'\] in {root} have no decodable images left; see the "
         r"skipped files: {half}: truncated"),
    cli("image", "corrupt-predict", "predict", lambda e: e.predict(image="corrupt"),
         r"skipped {corrupt}: not an image PIL can identify.*\nerror: cannot read any of the 1 "
         r"image\(s\); nothing to classify"),
    cli("image", "truncated-predict", "predict", lambda e: e.predict(image="half"),
         r"skipped {half}: truncated or corrupt image.*\nerror: cannot read any of the 1"),
    cli("image", "missing-predict", "predict", lambda e: e.predict(image="missing"),
         r"skipped {missing}: not found\nerror: cannot read any of the 1"),
    api("image", "corrupt-api", lambda e: _api("jaxcnn.data", "read_image_rgb",
                                               e.image("corrupt")),
        ValueError, r"^{corrupt}: not an image PIL can identify"),
    # bundles ---------------------------------------------------------------------------------
    cli("bundle", "missing-dir", "predict", lambda e: [str(e.new("nobundle")), e.image("png")],
         r"^error: no model bundle at .*nobundle: the folder does not exist"),
    cli("bundle", "is-a-file", "predict", lambda e: [e.a_file(), e.image("png")],
         r"^error: {file} is a file, not a bundle directory holding bundle\.json"),
    cli("bundle", "json-missing", "predict",
         lambda e: e.predict(lambda p: (p / "bundle.json").unlink()),
         r"^error: {bundle}/bundle\.json not found: {bundle} is not a complete jaxcnn bundle"),
    cli("bundle", "json-garbled", "predict",
         lambda e: e.predict(lambda p: (p / "bundle.json").write_bytes(b"\x00\xff{garbage")),
         r"^error: {bundle}/bundle\.json is not valid JSON .*; re-export the bundle"),
    cli("bundle", "json-truncated", "predict", lambda e: e.predict(lambda p: _half(
        p / "bundle.json")), r"^error: {bundle}/bundle\.json is not valid JSON"),
    cli("bundle", "json-field-missing", "predict",
         lambda e: e.predict(_edit_json(model_name=None)),
         r"^error: {bundle}/bundle\.json lacks the field 'model_name'; re-export the bundle"),
    cli("bundle", "json-unknown-model", "predict",
         lambda e: e.predict(_edit_json(model_name="nope")), r"^error: unknown model 'nope'"),
    cli("bundle", "json-other-version", "predict",
         lambda e: e.predict(_edit_json(format_version=99)),
         r"^error: {bundle}/bundle\.json has bundle format version 99, but this jaxcnn reads "
         r"version 1"),
    cli("bundle", "variables-missing", "predict",
         lambda e: e.predict(lambda p: (p / "variables.msgpack").unlink()),
         r"^error: {bundle}/variables\.msgpack not found: the bundle at {bundle} has no "
         r"weights; re-export it"),
    cli("bundle", "variables-truncated", "predict",
         lambda e: e.predict(lambda p: _half(p / "variables.msgpack")),
         r"^error: {bundle}/variables\.msgpack does not hold variables for model 'mlp'"),
    cli("bundle", "variables-garbled", "predict",
         lambda e: e.predict(lambda p: (p / "variables.msgpack").write_bytes(
             np.random.default_rng(0).bytes(300))),
         r"^error: {bundle}/variables\.msgpack does not hold variables for model 'mlp'"),
    cli("bundle", "figure-inside-a-file", "predict",
         lambda e: [*e.predict(), "--figure", f"{e.a_file()}/predictions.png"],
         r"^jaxcnn-predict: error: argument --figure: {file} is a file, not a folder"),
    cli("bundle", "top-k-zero", "predict", lambda e: [*e.predict(), "--top-k", "0"],
         r"^jaxcnn-predict: error: argument --top-k: expected an integer >= 1, got '0'"),
    api("bundle", "missing-api", lambda e: _api("jaxcnn.export", "load", e.new("nobundle")),
        FileNotFoundError, r"^no model bundle at .*nobundle: the folder does not exist"),
    # damaged checkpoints -----------------------------------------------------------------------
    cli("checkpoint", "only-one-truncated", "cifar10",
         lambda e: [*e.cifar10("--batch-size", "8"),
                    "--workdir", str(e.checkpoints(e.new("run") / "mlp").parent)],
         r"^error: no readable checkpoint in .*/mlp/checkpoints: {epoch1} \(garbled JSON.*\)\. "
         r"Move that directory away"),
    cli("checkpoint", "eval-only-without-any", "cifar10", lambda e: e.cifar10("--eval-only"),
         r"^error: no checkpoint in {workdir}/mlp; train first \(drop --eval-only\)"),
    api("checkpoint", "newest-truncated-api",
        lambda e: _restore(e.checkpoints(e.new("run"), epochs=(1, 2), truncated=(2,))),
        CheckpointWarning,
        r"^checkpoint {epoch2} is unreadable \(garbled JSON.*\); using .*/latest/1 \(epoch 1\)$"),
    api("checkpoint", "all-truncated-api",
        lambda e: _restore(e.checkpoints(e.new("run"), epochs=(1, 2), truncated=(1, 2))),
        ValueError, r"^no readable checkpoint in .*: {epoch2} \(garbled JSON.*; {epoch1} "
                    r"\(garbled JSON"),
    # downloads ---------------------------------------------------------------------------------
    cli("download", "unreachable-mirror", "cifar10", lambda e: e.download(),
         r"(?i)^error: Could not get cifar-10-binary\.tar\.gz for TFDS dataset 'cifar10' "
         r"\(split 'train'\): .*refused"),
    cli("download", "default-data-dir-offline", "speedrun", lambda e: [],
         r"(?i)^error: Could not get cifar-10-binary\.tar\.gz .*refused"),
    cli("download", "wrong-sha256", "cifar10",
         lambda e: e.download(url=e.mirror(), sha256="0" * 64),
         r"^error: Could not get cifar-10-binary\.tar\.gz .*checksum mismatch"),
    cli("download", "not-on-mirror", "cifar10", lambda e: e.download(url=e.mirror("x.tar.gz")),
         r"^error: Could not get cifar-10-binary\.tar\.gz .*HTTP error 404"),
    cli("download", "sha256-malformed", "cifar10", lambda e: e.download(sha256="abc123"),
         r"^error: JAXCNN_CIFAR10_SHA256 must be 64 hexadecimal digits, got 'abc123'"),
    cli("download", "url-without-sha256", "cifar10", lambda e: e.download(sha256=""),
         r"^error: JAXCNN_CIFAR10_URL is set \(http://127\.0\.0\.1:\d+/.*\) but "
         r"JAXCNN_CIFAR10_SHA256 is not"),
    cli("download", "flowers-offline", "flowers", lambda e: ["--image-size", "8"],
         r"(?s)^error: Could not get flower_photos\.tgz .*\nOr pass an image folder instead: "
         r"--data-dir PATH"),
    api("download", "wrong-sha256-api",
        lambda e: _load_tfds("train", e.download(url=e.mirror(), sha256="0" * 64)[1]),
        FileNotFoundError, r"^Could not get cifar-10-binary\.tar\.gz .*checksum mismatch"),
    # a damaged TFDS shard ----------------------------------------------------------------------
    cli("shard", "truncated-cli", "cifar10",
         lambda e: [*e.cifar10("--batch-size", "2"), "--data-dir", e.tfds_dir(damaged=True),
                    "--train-split", "train[:3]", "--eval-split", "train[3:]"],
         r"^error: cannot read {shard} \(.*\): this shard of the prepared TFDS dataset "
         r"'cifar10' is damaged"),
    cli("shard", "truncated-speedrun", "speedrun",
         lambda e: ["--data-dir", e.tfds_dir(damaged=True), "--workdir", str(e.new("run"))],
         r"^error: cannot read {shard} \("),
    # --workdir that is a file ------------------------------------------------------------------
    cli("workdir", "is-a-file", "cifar10",
         lambda e: [*e.cifar10("--batch-size", "8"), "--workdir", e.a_file()],
         r"^python -m experiments.cifar10: error: argument --workdir: {file} is a file, not a "
         r"folder; pass a folder path"),
    cli("workdir", "figures-lesson", "architectures",
         lambda e: ["--lesson", "figures", "--workdir", e.a_file()],
         r"^python -m experiments.architectures: error: argument --workdir: {file} is a file"),
    cli("workdir", "inside-a-file", "from_scratch",
         lambda e: ["--workdir", f"{e.a_file()}/run"],
         r"^python -m experiments.from_scratch: error: argument --workdir: {file}/run is inside "
         r"{file}, a file"),
    cli("workdir", "visuals-dir-is-a-file", "cifar10",
         lambda e: [*e.cifar10("--batch-size", "8"), "--visuals-dir", e.a_file()],
         r"^python -m experiments.cifar10: error: argument --visuals-dir: {file} is a file"),
    api("workdir", "is-a-file-api", lambda e: _fit(e.a_file()), ValueError,
        r"^workdir {file} is a file, not a folder; pass a folder path"),
]


# ---------------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------------


def _pattern(case: Case, env: Env) -> re.Pattern:
    filled = case.pattern
    for name, value in env.vars.items():
        filled = filled.replace("{" + name + "}", re.escape(str(value)))
    assert "{" not in re.sub(r"\{\d+(,\d*)?\}", "", filled), f"unfilled name in {filled}"
    return re.compile(filled, re.MULTILINE)


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if re.match(r"^(\S[^:]*: )?error: ", ln)]


def _run_command(case: Case, argv: list[str], env: Env, capsys) -> tuple[int, str]:
    if case.entry == SUBPROCESS:
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.cifar10", *argv], cwd=env.tmp,
            env={**os.environ, **fake_cpu_devices(2),
                 "PYTHONPATH": os.pathsep.join([str(_cli.REPO_ROOT),
                                                os.environ.get("PYTHONPATH", "")])},
            capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr
    if case.entry == "predict":  # jaxcnn-predict: sys.exit(main())
        try:
            code = predict.main(argv)
        except SystemExit as stop:  # argparse
            code = stop.code
    else:
        with pytest.raises(SystemExit) as stop:
            _cli.run(COMMANDS[case.entry].main, argv)
        code = stop.value.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out
    return code, err


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(case: Case, env: Env, capsys):
    made = case.make(env)
    if case.entry == "api":
        if issubclass(case.expect, Warning):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                made()
            messages = [str(w.message) for w in caught if issubclass(w.category, case.expect)]
            assert len(messages) == 1, messages
            message = messages[0]
            assert "\n" not in message
        else:
            with pytest.raises(case.expect) as info:
                made()
            assert isinstance(info.value, ValueError | FileNotFoundError)
            message = str(info.value)
        assert _pattern(case, env).search(message), message
        return
    code, err = _run_command(case, made, env, capsys)
    assert "Traceback" not in err, err
    assert code == case.expect, err
    assert len(_error_lines(err)) == 1, err
    assert _pattern(case, env).search(err), err


def test_every_family_is_in_the_table():
    families = {p.id.split("-")[0] for p in CASES}
    assert families == {"split", "batch", "number", "model", "folder", "image", "bundle",
                        "checkpoint", "download", "shard", "workdir"}
    assert len(CASES) >= 40
    assert len({p.id for p in CASES}) == len(CASES)
