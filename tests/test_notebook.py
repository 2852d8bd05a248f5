"""``experiments/colab.ipynb`` runs top to bottom, unchanged, offline, on 8 fake CPU devices.

The way CI runs it (``python -m pytest -m notebook``): ``JAXCNN_SMOKE=1`` shrinks every training
to seconds, ``JAX_NUM_CPU_DEVICES=8`` stands in for a TPU v2-8's cores, and the datasets come
from small synthetic copies of the official archives served on 127.0.0.1 through the
``JAXCNN_*_URL`` / ``_SHA256`` overrides. Marked ``notebook`` (deselected by default) because
it costs a couple of minutes.
"""

import base64
import os
import time

import pytest
from conftest import REPO_ROOT
from device_env import fake_cpu_devices
from fake_archives import make_cifar10_archive, make_flowers_archive, serve_directory

pytestmark = pytest.mark.notebook

NOTEBOOK = REPO_ROOT / "experiments" / "colab.ipynb"


def _png_outputs(nb):
    return [out["data"]["image/png"] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_colab_notebook_runs_offline_on_8_devices(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    served = tmp_path / "served"
    cifar = make_cifar10_archive(served / "cifar-10-binary.tar.gz", per_batch=120, test=200)
    flowers = make_flowers_archive(served / "flower_photos.tgz", per_class=12, size=(60, 80))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    runs_existed = (REPO_ROOT / "runs" / "colab").exists()
    with serve_directory(served) as url:
        env = {
            "JAXCNN_SMOKE": "1",
            **fake_cpu_devices(8),
            "MPLBACKEND": "Agg",
            "JAXCNN_CIFAR10_URL": f"{url}/cifar-10-binary.tar.gz",
            "JAXCNN_CIFAR10_SHA256": cifar["sha256"],
            "JAXCNN_TF_FLOWERS_URL": f"{url}/flower_photos.tgz",
            "JAXCNN_TF_FLOWERS_SHA256": flowers["sha256"],
            "TFDS_DATA_DIR": str(tmp_path / "tfds"),
            "JAXCNN_CACHE_DIR": str(tmp_path / "cache"),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        # The kernel starts in a stand-in checkout (links to the real package folders) under
        # tmp, where the setup cell finds it, so runs/ and my_images/ land in tmp.
        run_dir = tmp_path / "checkout"
        run_dir.mkdir()
        os.symlink(REPO_ROOT / "jaxcnn", run_dir / "jaxcnn")
        os.symlink(REPO_ROOT / "experiments", run_dir / "experiments")
        os.symlink(REPO_ROOT / "pyproject.toml", run_dir / "pyproject.toml")
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3",
            resources={"metadata": {"path": str(run_dir)}},
        )
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    print(f"notebook ran in {seconds:.0f} s")
    text = _text(nb)
    assert "verdict: 8 CPU devices" in text
    assert "compute dtype: float32" in text
    pngs = _png_outputs(nb)
    # Main job figures, flowers figures and the prediction figure are shown inline.
    assert len(pngs) >= 5, f"only {len(pngs)} inline figures"
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    runs = run_dir / "runs" / "colab"
    assert (runs / "cifar10" / "results.json").exists()
    assert (runs / "custom" / "bundle").is_dir()
    assert (runs / "custom" / "my_predictions.png").stat().st_size > 0
    assert (run_dir / "my_images").is_dir()
    # Nothing was written into the real checkout.
    assert (REPO_ROOT / "runs" / "colab").exists() == runs_existed
