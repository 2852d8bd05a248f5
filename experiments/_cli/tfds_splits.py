"""TFDS split strings on the command line: the ``--train-split`` / ``--eval-split`` value type
and the warning when the two (may) share examples."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping

# Sizes of the CIFAR-10 TFDS splits, to resolve percent slices in split-overlap warnings.
CIFAR10_SPLIT_SIZES = {"train": 50_000, "test": 10_000}

# A TFDS split: a name, optionally sliced with [start:end]; each bound an int or an int percent,
# either may be negative (counted from the end) or left out. Parts can be joined with '+'.
_BOUND = r"[-+]?\d+%?"
_PART_RE = re.compile(
    rf"^(?P<name>[A-Za-z_][\w\-]*)(?:\[(?P<start>{_BOUND})?:(?P<end>{_BOUND})?\])?$"
)


def _split_parts(text: str) -> list[tuple[str, tuple | None, tuple | None]]:
    """``[(name, start, end), ...]`` of a split string; a bound is ``(value, is_percent)`` or
    None. Raises ValueError naming the bad part."""
    parts = []
    for raw in text.split("+"):
        part = raw.strip()
        m = _PART_RE.match(part)
        if m is None:
            raise ValueError(
                f"bad split {text!r}: {part!r} is not NAME or NAME[START:END] (START and END "
                "optional integers or integer percents, e.g. 'train', 'train[:45000]', "
                "'train[45000:]', 'train[:90%]', 'test[-10%:]')"
            )
        bounds = []
        for key in ("start", "end"):
            b = m.group(key)
            if b is None:
                bounds.append(None)
                continue
            pct = b.endswith("%")
            value = int(b.rstrip("%"))
            if pct and abs(value) > 100:
                raise ValueError(f"bad split {text!r}: percent {b} is outside [-100%, 100%]")
            bounds.append((value, pct))
        parts.append((m.group("name"), bounds[0], bounds[1]))
    return parts


def tfds_split(text: str) -> str:
    """argparse type: a TFDS split string such as ``train``, ``train[:45000]`` or
    ``train[10%:]`` (parts may be joined with ``+``); returned stripped."""
    text = text.strip()
    try:
        _split_parts(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _position(bound, size: int | None, open_as: str):
    """A bound as a comparable position: ``("start",)`` / ``("end",)`` for the ends of the
    split (``open_as`` for an open bound), ``("abs", i)`` for a known index, ``("frac", f)``
    for a fraction of the split and ``("from_end", i)`` for a negative index of a split of
    unknown size."""
    if bound is None:
        return (open_as,)
    value, pct = bound
    if size is not None:
        index = round(size * value / 100) if pct else value
        if index < 0:
            index += size
        index = min(max(index, 0), size)
        return ("start",) if index == 0 else ("end",) if index == size else ("abs", index)
    if pct:
        frac = value / 100 if value >= 0 else 1 + value / 100
        return ("start",) if frac <= 0 else ("end",) if frac >= 1 else ("frac", frac)
    if value == 0:
        return ("start",)
    return ("abs", value) if value > 0 else ("from_end", value)


def _less(a, b) -> bool | None:
    """``a < b`` for two positions, or None when it cannot be told without the split size."""
    if a == b:
        return False
    if a == ("start",) or b == ("end",):
        return True
    if a == ("end",) or b == ("start",):
        return False
    if a[0] == b[0]:
        return a[1] < b[1]
    return None


def splits_overlap(a: str, b: str, sizes: Mapping[str, int] | None = None) -> bool | None:
    """Whether two TFDS split strings can share examples: True, False, or None when it
    cannot be told (percent slices against index slices, or negative indices, of a split
    whose size is not in ``sizes``). Different base splits (``train`` / ``test``) never
    overlap."""
    sizes = dict(sizes or {})
    verdict: bool | None = False
    for name_a, start_a, end_a in _split_parts(a):
        for name_b, start_b, end_b in _split_parts(b):
            if name_a != name_b:
                continue
            size = sizes.get(name_a)
            sa, ea = _position(start_a, size, "start"), _position(end_a, size, "end")
            sb, eb = _position(start_b, size, "start"), _position(end_b, size, "end")
            checks = [_less(sa, ea), _less(sb, eb), _less(sa, eb), _less(sb, ea)]
            if False in checks:  # an empty slice, or the ranges are disjoint
                continue
            if all(checks):
                return True
            verdict = None
    return verdict


def warn_split_overlap(train_split: str, eval_split: str,
                       sizes: Mapping[str, int] | None = None) -> bool | None:
    """Print a warning to stderr when the train and eval splits (may) share examples, so the
    reported accuracy would be measured partly on training data. Returns the verdict."""
    verdict = splits_overlap(train_split, eval_split, sizes)
    if verdict is True:
        print(f"warning: --train-split {train_split!r} and --eval-split {eval_split!r} overlap: "
              "the eval accuracy is measured partly on training images (use disjoint slices, "
              "e.g. 'train[:45000]' and 'train[45000:]')", file=sys.stderr)
    elif verdict is None:
        print(f"warning: --train-split {train_split!r} and --eval-split {eval_split!r} may "
              "overlap (percent and index slices of the same split); check they are disjoint",
              file=sys.stderr)
    return verdict
