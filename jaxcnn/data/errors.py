"""The data errors: what the loaders raise when data is missing or damaged.

Both are ``ValueError`` / ``FileNotFoundError`` subclasses, so a CLI prints them as one line.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DamagedDataError", "DataNotFoundError", "empty_split_message", "not_found"]


class DataNotFoundError(FileNotFoundError):
    """The requested dataset/split is not prepared in the data dir and could not be downloaded."""


class DamagedDataError(ValueError):
    """A file of a prepared dataset cannot be read (truncated, garbled or missing); the message
    names the file and says how to get an intact copy."""


def not_found(name: str, split: str, data_dir: Path, reason: str,
              other_way: str | None = None) -> DataNotFoundError:
    """The error for TFDS dataset ``name`` (split ``split``) missing from ``data_dir``.

    Args:
      reason: what was tried, one sentence ("Download disabled (download=False).").
      other_way: the second fix offered after "--data-dir"; default: download with TFDS.
    """
    other_way = other_way or (
        "or run with download enabled on a machine with internet (preparing needs TensorFlow: "
        'pip install "jaxcnn[prepare]").'
    )
    return DataNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) was not found: searched data dir {data_dir} "
        f"(expected a prepared copy in {data_dir / name}/<version>/).\n"
        f"{reason}\n"
        "Fix: pass the TFDS data dir that holds a prepared copy with --data-dir DIR (Python: "
        f"data_dir=DIR) or set TFDS_DATA_DIR=DIR; {other_way}"
    )


def empty_split_message(split: str, name: str, sizes: str) -> str:
    """The ValueError text for a split string that selects no examples (``'train[:0]'``,
    ``'train[50000:]'``); ``sizes``: the examples per split, as text."""
    return (
        f"split {split!r} selects no examples of {name} ({sizes} examples); pass a slice that "
        "holds some, e.g. 'train[:45000]' / 'train[45000:]' or 'train[:90%]'"
    )
