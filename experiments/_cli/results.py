"""What the lessons write and print: ``results.json`` files, plain-text tables, and the CIFAR-10
data the CIFAR lessons train on."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_json(path: str | os.PathLike, obj, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically: a temporary file in the same folder
    (created if missing) renamed over ``path``, so a reader never sees half a file. In a
    multi-process run only process 0 writes (the others return the path)."""
    from jaxcnn.distributed import is_primary

    path = Path(path)
    if not is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=sort_keys))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def update_results(path: str | os.PathLike, name: str, row: dict) -> dict:
    """Merge ``row`` under ``name`` into the JSON file ``path`` (a ``results.json``; other
    entries kept, written atomically) and return the whole merged dict."""
    path = Path(path)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = row
    write_json(path, results, sort_keys=True)
    return results


def training_summary(history: Sequence[dict], config, seconds: float, batch_size: int) -> dict:
    """The columns a lesson reports for every model it trained with ``fit``: ``epochs`` (those in
    ``history``, else ``config.epochs``), ``train_seconds`` (``seconds``), ``images_per_s`` (the
    median of the epochs' ``images_per_s``; NaN without history), ``recipe`` (``config``, a
    ``FitConfig``, as a dict) and ``batch_size``."""
    import numpy as np

    return {
        "epochs": len(history) if history else config.epochs,
        "train_seconds": seconds,
        "images_per_s": float(np.median([h["images_per_s"] for h in history]))
        if history else float("nan"),
        "recipe": config.to_dict(),
        "batch_size": batch_size,
    }


def format_table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[str]]) -> str:
    """A plain-text table: the header line, a rule as wide as it, then one line per row.

    Args:
      columns: ``(header, width)`` per column; the first column is left-aligned, the others
        right-aligned, one space apart.
      rows: the cells of each row, already formatted as strings.
    """
    def line(cells):
        return " ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                        for i, (c, (_, w)) in enumerate(zip(cells, columns, strict=True)))

    head = line([h for h, _ in columns])
    return "\n".join([head, "-" * len(head), *(line(r) for r in rows)])


def print_table(table: str, results_path: str | os.PathLike | None = None) -> None:
    """Print a lesson's closing ``table`` after a blank line, then (given ``results_path``)
    where its results were written."""
    print()
    print(table)
    if results_path is not None:
        print(f"\nresults: {results_path}")


def load_cifar10(args, *, need_eval: bool = True):
    """``(train, eval)`` CIFAR-10 ArrayDatasets for a lesson's parsed flags.

    Reads ``args.train_split`` and (unless ``need_eval`` is False, when ``eval`` is None)
    ``args.eval_split`` from ``args.data_dir`` with :func:`jaxcnn.data.load_tfds`, then cuts them
    to ``args.limit_train`` / ``args.limit_eval`` where the lesson has those flags. Missing data
    raises the loader's ``DataNotFoundError`` (a ``FileNotFoundError``), which
    :func:`experiments._cli.run` prints as one ``error:`` line.
    """
    from jaxcnn.data import ArrayDataset, load_tfds

    def load(split, limit):
        ds = load_tfds("cifar10", split, data_dir=args.data_dir, progress=args.progress)
        if limit is None or limit >= len(ds):
            return ds
        return ArrayDataset(ds.images[:limit], ds.labels[:limit], ds.class_names)

    train = load(args.train_split, getattr(args, "limit_train", None))
    evaluation = load(args.eval_split, getattr(args, "limit_eval", None)) if need_eval else None
    return train, evaluation


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (``VmHWM``), measured the way the
    baseline scripts measure theirs: ``experiments/baselines/peak_rss.py``, loaded by path
    (the baselines folder is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "baselines" / "peak_rss.py"
    spec = importlib.util.spec_from_file_location("_baseline_peak_rss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_rss_mb()
