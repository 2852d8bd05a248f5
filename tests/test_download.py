"""The first run without TensorFlow: official archives downloaded from 127.0.0.1, checked, decoded.

Every server here is ``tests/fake_archives.serve_directory`` on 127.0.0.1 with small synthetic
archives in the official layouts; nothing leaves the machine. TensorFlow is not installed in the
test environment, so an unprepared data dir takes jaxcnn's own download path (a test forces the
"TensorFlow present" branch by patching).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_archives import (
    CIFAR10_CLASSES,
    FLOWER_FOLDERS,
    closed_port_url,
    make_cifar10_archive,
    make_flowers_archive,
    recording_handler,
    serve_directory,
    stalling_handler,
    trickling_handler,
    truncating_handler,
)

import jaxcnn.data.tfds_source as tfds_source
from jaxcnn.data import DataNotFoundError, load_tfds, npz_cache, official
from jaxcnn.data.download import ChecksumError, DownloadError, fetch, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR = "cifar-10-binary.tar.gz"
FLOWERS = "flower_photos.tgz"
TFDS_FLOWER_IDS = {"dandelion": 0, "daisy": 1, "tulips": 2, "sunflowers": 3, "roses": 4}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Everything under tmp: caches, HOME; no proxy (127.0.0.1 is contacted directly)."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "TFDS_DATA_DIR", "JAXCNN_CIFAR10_URL", "JAXCNN_CIFAR10_SHA256",
                "JAXCNN_TF_FLOWERS_URL", "JAXCNN_TF_FLOWERS_SHA256"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXCNN_DOWNLOAD_TIMEOUT", "5")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """The served folder with both synthetic archives, and what they hold."""
    folder = tmp_path_factory.mktemp("served")
    cifar = make_cifar10_archive(folder / CIFAR, per_batch=6, test=8, seed=1)
    flowers = make_flowers_archive(folder / FLOWERS, per_class=3, size=(40, 56), seed=2)
    return dict(folder=folder, cifar=cifar, flowers=flowers)


def point_at(monkeypatch, url: str, sha: str, dataset: str = "CIFAR10") -> None:
    monkeypatch.setenv(f"JAXCNN_{dataset}_URL", url)
    monkeypatch.setenv(f"JAXCNN_{dataset}_SHA256", sha)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_cifar10_planes_labels_and_splits(tmp_path, monkeypatch, archives):
    c = archives["cifar"]
    log: list = []
    data = tmp_path / "data"
    with serve_directory(archives["folder"], recording_handler(log)) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", c["sha256"])
        train = load_tfds("cifar10", "train", data_dir=data, progress=False)
        test = load_tfds("cifar10", "test", data_dir=data, progress=False)
        head = load_tfds("cifar10", "train[:7]", data_dir=data, progress=False)
        tail = load_tfds("cifar10", "train[7:]", data_dir=data, progress=False)
        pct = load_tfds("cifar10", "train[:33%]", data_dir=data, progress=False)
        last = load_tfds("cifar10", "train[-4:]", data_dir=data, progress=False)
        both = load_tfds("cifar10", "train[:3]+test", data_dir=data, progress=False)
    assert log == [f"/{CIFAR}"]  # downloaded once, then read from the downloads folder
    assert sha256_file(data / "downloads" / CIFAR) == c["sha256"]

    assert train.images.shape == (30, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.class_names == CIFAR10_CLASSES
    np.testing.assert_array_equal(train.images, c["train_images"])  # R, G, B planes -> HWC
    np.testing.assert_array_equal(train.labels, c["train_labels"])  # batches 1..5 in order
    np.testing.assert_array_equal(test.images, c["test_images"])
    np.testing.assert_array_equal(test.labels, c["test_labels"])
    np.testing.assert_array_equal(head.images, c["train_images"][:7])
    np.testing.assert_array_equal(tail.images, c["train_images"][7:])
    np.testing.assert_array_equal(tail.labels, c["train_labels"][7:])
    # TFDS rounds percent boundaries to the closest example: 33% of 30 = 9.9 -> 10.
    np.testing.assert_array_equal(pct.images, c["train_images"][:10])
    np.testing.assert_array_equal(last.labels, c["train_labels"][-4:])
    np.testing.assert_array_equal(both.images,
                                  np.concatenate([c["train_images"][:3], c["test_images"]]))


def test_tf_flowers_tfds_ids_and_resize(tmp_path, monkeypatch, archives):
    f = archives["flowers"]
    log: list = []
    with serve_directory(archives["folder"], recording_handler(log)) as url:
        point_at(monkeypatch, f"{url}/{FLOWERS}", f["sha256"], "TF_FLOWERS")
        # Checked before any download: the photos differ in size, and there is only 'train'.
        with pytest.raises(ValueError, match="image_size"):
            load_tfds("tf_flowers", "train", data_dir=tmp_path / "data", progress=False)
        with pytest.raises(DataNotFoundError, match=r"no split 'test'.*\['train'\]"):
            load_tfds("tf_flowers", "test", data_dir=tmp_path / "data", image_size=24)
        assert log == []
        ds = load_tfds("tf_flowers", "train", data_dir=tmp_path / "data", image_size=(24, 30),
                       progress=False)
    assert ds.class_names == ("dandelion", "daisy", "tulips", "sunflowers", "roses")
    assert ds.images.shape == (15, 24, 30, 3) and ds.images.dtype == np.uint8
    # Archive order: folders as make_flowers_archive wrote them, labelled with TFDS's ids.
    expected = np.repeat([TFDS_FLOWER_IDS[d] for d in FLOWER_FOLDERS], 3)
    np.testing.assert_array_equal(ds.labels, expected)
    # The synthetic photos encode their folder in their colour: check the decoded pixels too.
    for c, folder in enumerate(FLOWER_FOLDERS):
        base = np.array([40 * c + 30, 200 - 30 * c, 60 + 20 * c])
        mean = ds.images[ds.labels == TFDS_FLOWER_IDS[folder]].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(mean, base, atol=6)


def test_checksum_mismatch(tmp_path, monkeypatch, archives):
    wrong = "0" * 64
    data = tmp_path / "data"
    with serve_directory(archives["folder"]) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", wrong)
        with pytest.raises(DataNotFoundError) as err:
            load_tfds("cifar10", "train", data_dir=data, progress=False)
    msg = str(err.value)
    assert "checksum mismatch" in msg and wrong in msg and archives["cifar"]["sha256"] in msg
    assert "JAXCNN_CIFAR10_URL" in msg and "JAXCNN_CIFAR10_SHA256" in msg
    assert f"{url}/{CIFAR}" in msg and "--data-dir" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert files_under(data) == []  # the bad file (and any temp file) is gone
    assert files_under(tmp_path / "cache") == []  # and nothing was cached


def test_truncated_download_leaves_nothing(tmp_path, monkeypatch, archives):
    data = tmp_path / "data"
    log: list = []
    with serve_directory(archives["folder"], truncating_handler(0.5, log)) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", archives["cifar"]["sha256"])
        with pytest.raises(DataNotFoundError) as err:
            load_tfds("cifar10", "train", data_dir=data, progress=False)
    assert "incomplete download" in str(err.value) and f"{url}/{CIFAR}" in str(err.value)
    assert len(log) == 1  # one attempt, no retry loop
    assert files_under(data) == [] and files_under(tmp_path / "cache") == []


def test_server_gone_after_caching(tmp_path, monkeypatch, archives):
    c = archives["cifar"]
    data = tmp_path / "data"
    with serve_directory(archives["folder"]) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", c["sha256"])
        first = load_tfds("cifar10", "train[:12]", data_dir=data, progress=False)
    # The server is down now. Another split decodes the cached archive ...
    test = load_tfds("cifar10", "test", data_dir=data, progress=False)
    np.testing.assert_array_equal(test.images, c["test_images"])
    # ... and a split loaded before comes from the npz cache: no archive needed at all.
    (data / "downloads" / CIFAR).unlink()

    def no_archive(*args, **kwargs):
        raise AssertionError("the archive was opened although an npz cache exists")

    monkeypatch.setattr(official, "fetch_archive", no_archive)
    again = load_tfds("cifar10", "train[:12]", data_dir=data, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, c["train_labels"][:12])
    assert again.class_names == CIFAR10_CLASSES


def test_unreachable_server_fails_fast(tmp_path, monkeypatch, archives):
    monkeypatch.setenv("JAXCNN_DOWNLOAD_TIMEOUT", "30")  # the default: refusal is immediate
    url = closed_port_url(f"/{CIFAR}")
    point_at(monkeypatch, url, archives["cifar"]["sha256"])
    data = tmp_path / "data"
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError) as err:
        load_tfds("cifar10", "train", data_dir=data, progress=False)
    assert time.perf_counter() - start < 30
    msg = str(err.value)
    assert url in msg and "--data-dir" in msg and "refused" in msg.lower()
    # The other way out: the folder to place the archive in, by its file name.
    assert f"{CIFAR}" in msg and str(data / "downloads") in msg
    assert files_under(data) == []


def test_stalled_server_times_out(tmp_path, monkeypatch, archives):
    monkeypatch.setenv("JAXCNN_DOWNLOAD_TIMEOUT", "1")
    release = threading.Event()
    data = tmp_path / "data"
    try:
        with serve_directory(archives["folder"], stalling_handler(release)) as url:
            point_at(monkeypatch, f"{url}/{CIFAR}", archives["cifar"]["sha256"])
            start = time.perf_counter()
            with pytest.raises(DataNotFoundError) as err:
                load_tfds("cifar10", "train", data_dir=data, progress=False)
            elapsed = time.perf_counter() - start
            release.set()
    finally:
        release.set()
    assert elapsed < 10
    assert "stalled" in str(err.value) and "no data for 1 s" in str(err.value)
    assert files_under(data) == []


def test_slow_but_live_download_goes_on(tmp_path, archives):
    # Four pieces 0.6 s apart: 2.4 s in all, longer than the 1 s stall timeout, never silent
    # for 1 s. The timeout is per read, not a deadline for the whole transfer.
    src = archives["folder"] / CIFAR
    with serve_directory(archives["folder"], trickling_handler(pieces=4, pause=0.6)) as url:
        start = time.perf_counter()
        path = fetch(f"{url}/{CIFAR}", tmp_path / "dl" / CIFAR,
                     sha256=archives["cifar"]["sha256"], progress=False, timeout=1.0)
        assert time.perf_counter() - start > 1.5
    assert path.read_bytes() == src.read_bytes()
    assert [p.name for p in files_under(tmp_path / "dl")] == [CIFAR]


def test_fetch_progress_bar_and_existing_file(tmp_path, archives, capsys):
    from tqdm import tqdm

    sha = archives["cifar"]["sha256"]
    size = (archives["folder"] / CIFAR).stat().st_size
    dest = tmp_path / "dl" / CIFAR
    log: list = []
    with serve_directory(archives["folder"], recording_handler(log)) as url:
        fetch(f"{url}/{CIFAR}", dest, sha256=sha, progress=True)
        bar = capsys.readouterr().err
        assert f"downloading {CIFAR}" in bar
        assert "/" + tqdm.format_sizeof(size, divisor=1024) in bar and "B/s" in bar  # its size
        fetch(f"{url}/{CIFAR}", dest, sha256=sha, progress=True)  # cached: no request
        assert len(log) == 1
        # A file at the destination that jaxcnn did not verify is never overwritten or deleted.
        dest.write_bytes(b"not the archive")
        with pytest.raises(ChecksumError) as err:
            fetch(f"{url}/{CIFAR}", dest, sha256=sha, progress=False)
        assert err.value.expected == sha and "left alone" in str(err.value)
        assert dest.read_bytes() == b"not the archive" and len(log) == 1
        with pytest.raises(DownloadError, match="HTTP error 404"):
            fetch(f"{url}/missing.tar.gz", tmp_path / "dl" / "missing.tar.gz", sha256=sha,
                  progress=False)
    assert sorted(p.name for p in files_under(tmp_path / "dl")) == [CIFAR]


def test_cache_entries_of_the_two_sources_differ(tmp_path, monkeypatch, archives):
    c = archives["cifar"]
    data = tmp_path / "data"
    with serve_directory(archives["folder"]) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", c["sha256"])
        load_tfds("cifar10", "train[:5]", data_dir=data, progress=False)
    cached = files_under(tmp_path / "cache")
    assert [p.relative_to(tmp_path / "cache").as_posix() for p in cached] == \
        ["cifar10/official/train_-5.npz"]
    with np.load(cached[0]) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["source"] == "official" and meta["archive_sha256"] == c["sha256"]
    # The TFDS reader's entry for the same request lives elsewhere and has other metadata, so
    # neither path can ever return the other's arrays.
    tfds_rel = npz_cache.relpath("cifar10", "train[:5]", None)
    assert tfds_rel.as_posix() == "cifar10/tfds/train_-5.npz"
    tfds_meta = npz_cache.meta("tfds", "cifar10", "train[:5]", None,
                               data_dir=str(data.resolve()))
    assert tfds_meta["source"] == "tfds"
    assert npz_cache.read(cached[0], tfds_meta) is None
    # Another archive (another checksum) is another entry too.
    other = npz_cache.meta("official", "cifar10", "train[:5]", None,
                           archive_sha256="1" * 64)
    assert npz_cache.read(cached[0], other) is None


def test_checks_before_any_download(tmp_path, monkeypatch, archives):
    log: list = []
    data = tmp_path / "data"
    with serve_directory(archives["folder"], recording_handler(log)) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", archives["cifar"]["sha256"])
        with pytest.raises(ValueError) as err:
            load_tfds("cifar10", "train[:500", data_dir=data)
        msg = str(err.value)
        assert "\n" not in msg and "'train[:500'" in msg and "'train[:45000]'" in msg
        assert "'train[:10%]'" in msg
        with pytest.raises(DataNotFoundError, match=r"no split 'validation'.*'train', 'test'"):
            load_tfds("cifar10", "validation", data_dir=data)
        with pytest.raises(ValueError, match="shard"):
            load_tfds("cifar10", "train[:1shard]", data_dir=data)
        # Out of range is only known once the archive is read; it is a clear ValueError too.
        with pytest.raises(ValueError, match=r"'train\[:45000\]'.*30"):
            load_tfds("cifar10", "train[:45000]", data_dir=data, progress=False)
    assert len(log) == 1  # only the last request needed the archive
    # A URL override needs its checksum.
    monkeypatch.delenv("JAXCNN_CIFAR10_SHA256")
    with pytest.raises(ValueError, match="JAXCNN_CIFAR10_SHA256"):
        load_tfds("cifar10", "test", data_dir=tmp_path / "other")
    monkeypatch.setenv("JAXCNN_CIFAR10_SHA256", "abc")
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        load_tfds("cifar10", "test", data_dir=tmp_path / "other")


def test_placed_archive_and_download_disabled(tmp_path, monkeypatch, archives):
    c = archives["cifar"]
    data = tmp_path / "data"
    point_at(monkeypatch, closed_port_url(f"/{CIFAR}"), c["sha256"])
    with pytest.raises(DataNotFoundError) as err:
        load_tfds("cifar10", "test", data_dir=data, download=False)
    msg = str(err.value)
    assert "download=False" in msg and CIFAR in msg and str(data / "downloads") in msg
    assert "--data-dir" in msg and not data.exists()  # nothing written
    # The archive placed by hand where the message says is used without any network.
    (data / "downloads").mkdir(parents=True)
    (data / "downloads" / CIFAR).write_bytes((archives["folder"] / CIFAR).read_bytes())
    test = load_tfds("cifar10", "test", data_dir=data, download=False, progress=False)
    np.testing.assert_array_equal(test.labels, c["test_labels"])


def test_tensorflow_present_keeps_tfds_prepare_first(tmp_path, monkeypatch, archives):
    import tensorflow_datasets as tfds

    calls = []

    def prepare(self, *args, **kwargs):
        calls.append(self.name)
        raise RuntimeError("TFDS prepare was asked")

    monkeypatch.setattr(tfds_source, "tensorflow_available", lambda: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare)
    log: list = []
    with serve_directory(archives["folder"], recording_handler(log)) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", archives["cifar"]["sha256"])
        with pytest.raises(DataNotFoundError, match="TFDS prepare was asked"):
            load_tfds("cifar10", "train", data_dir=tmp_path / "data", progress=False)
    assert calls == ["cifar10"] and log == []


def test_prepared_tfds_dir_is_preferred(cifar10_data_dir, tmp_path, monkeypatch, archives):
    # A prepared copy is read even though a (fake) archive is one request away.
    log: list = []
    with serve_directory(archives["folder"], recording_handler(log)) as url:
        point_at(monkeypatch, f"{url}/{CIFAR}", archives["cifar"]["sha256"])
        ds = load_tfds("cifar10", "train[:20]", data_dir=cifar10_data_dir.parent,
                       progress=False)
    assert log == [] and len(ds) == 20 and ds.images.std() > 30  # real photos, not noise
    cached = [p.relative_to(tmp_path / "cache").as_posix()
              for p in files_under(tmp_path / "cache")]
    assert cached == ["cifar10/tfds/train_-20.npz"]


def test_first_run_of_the_main_experiment(tmp_path, archives):
    """The README's command on a fresh machine: no TensorFlow, no data dir, our download."""
    from jaxcnn import export

    folder = tmp_path / "served"
    c = make_cifar10_archive(folder / CIFAR, per_batch=10, test=20, seed=3)
    workdir, data = tmp_path / "run", tmp_path / "empty"
    data.mkdir()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(JAX_PLATFORMS="cpu", NO_PROXY="127.0.0.1", JAXCNN_CIFAR10_SHA256=c["sha256"])
    cmd = [sys.executable, "-m", "experiments.cifar10", "--models", "mlp", "--epochs", "1",
           "--train-split", "train[:40]", "--eval-split", "test", "--batch-size", "8",
           "--data-dir", str(data), "--workdir", str(workdir), "--no-figures", "--no-progress"]

    def run():
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)

    with serve_directory(folder) as url:
        env["JAXCNN_CIFAR10_URL"] = f"{url}/{CIFAR}"
        first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    printed = re.search(r"mlp: (\d+\.\d+)% on test", first.stdout)
    assert printed, first.stdout[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    accuracy = results["mlp"]["test_accuracy"]
    assert float(printed.group(1)) == pytest.approx(100 * accuracy, abs=0.006)
    # The exported bundle predicts the archive's test images with the reported accuracy: the
    # main job's default flip TTA, which the bundle applies itself.
    bundle = export.load(workdir / "mlp" / "bundle")
    assert bundle.tta == results["mlp"]["tta"] == "flip"
    predicted = bundle.predict(c["test_images"]).argmax(-1)
    assert float((predicted == c["test_labels"]).mean()) == pytest.approx(
        results["mlp"]["test_accuracy_tta"], abs=1e-9)
    assert (data / "downloads" / CIFAR).exists()

    second = run()  # the server is gone: everything comes from the downloads folder / caches
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"mlp: \d+\.\d+% on test", second.stdout), second.stdout[-2000:]
