"""Integer and shape arguments, checked on static values.

The lowest layer of ``jaxcnn.ops``: the shape formulas (``shapes``) and the convolution and
pooling argument checks (``_checks``) both build on it. Each error names the argument, the bad
value and the form that was expected.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np


def shape_of(a, name: str) -> tuple[int, ...]:
    """The static shape of an array, tracer or nested sequence."""
    shape = getattr(a, "shape", None)
    if shape is None:
        try:
            shape = np.shape(a)
        except Exception as err:  # ragged lists and the like
            raise ValueError(f"{name} must be an array; got {type(a).__name__}: {err}") from None
    return tuple(int(d) for d in shape)


def _as_int(v, name: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an int; got bool {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an int; got {v!r} ({type(v).__name__})") from None


def positive_int(v, name: str) -> int:
    """``v`` as an int >= 1, or ValueError naming ``name``."""
    i = _as_int(v, name)
    if i < 1:
        raise ValueError(f"{name} must be a positive int (>= 1); got {v!r}")
    return i


def nonnegative_int(v, name: str) -> int:
    """``v`` as an int >= 0, or ValueError naming ``name``."""
    i = _as_int(v, name)
    if i < 0:
        raise ValueError(f"{name} must be a non-negative int (>= 0); got {v!r}")
    return i


def int_tuple(value, n: int, name: str) -> tuple[int, ...]:
    """An int or a length-``n`` sequence of ints, each >= 1, as a tuple of ``n`` ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(
                f"{name} must be an int or a sequence of {n} ints (one per spatial axis); "
                f"got {value!r} of length {len(value)}"
            )
        return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    try:
        v = positive_int(value, name)
    except ValueError:
        raise ValueError(
            f"{name} must be a positive int or a sequence of {n} positive ints; got {value!r}"
        ) from None
    return (v,) * n
