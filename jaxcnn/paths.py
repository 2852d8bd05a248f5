"""Checks on the paths a run writes to, made before any work."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["file_in_the_way"]


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The existing file at ``path`` or at a folder above it, which stops ``path`` from being
    (or being created as) a folder; None when the path can be a folder."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return None if existing is None or existing.is_dir() else existing
