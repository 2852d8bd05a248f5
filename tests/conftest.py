"""Shared test set-up: CPU only, quick compilation, paths to the optional real data."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _share_compilations() -> None:
    """One persistent XLA compilation cache for this test run: its workers and subprocesses.

    Many tests compile the same train and eval steps (same model, shapes and flags); with the
    cache each distinct program is compiled once per run instead of once per test and process.
    The folder is new for each run (the controller makes it, workers and the commands the
    end-to-end tests start inherit it through the environment) and is removed at exit. JAX
    writes entries without a lock: a worker that reads an entry while another is writing the
    same one gets a warning and compiles it itself (a truncated entry fails to decompress). Set
    JAX_COMPILATION_CACHE_DIR yourself to keep or inspect it; set it to an empty string to
    compile everything afresh.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="jaxcnn-tests-xla-cache-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _compile_quickly() -> None:
    """Ask XLA's CPU backend for its lowest optimisation level (LLVM -O0), unless set already.

    Test inputs are tiny, so compiling dominates the run: this takes about a third off it. The
    level changes how fast the generated code runs; the whole suite passes at either level (the
    numeric tests keep their float32 tolerances). Set XLA_FLAGS=--xla_backend_optimization_level=3
    to test with XLA's default level (3).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


_share_compilations()
_compile_quickly()

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAXCNN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set JAXCNN_SHARED_DATA to its folder)")
    return path


@pytest.fixture
def cifar10_data_dir() -> Path:
    """The TFDS data_dir holding the real CIFAR-10 train split, or skip."""
    return _require(SHARED_DATA / "tfds" / "cifar10")


@pytest.fixture
def flowers_dir() -> Path:
    """The image folder of real flower photos, or skip."""
    return _require(SHARED_DATA / "flowers")
