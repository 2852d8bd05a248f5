"""Shared test set-up: CPU only, float32 defaults, paths to the optional real data."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

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
