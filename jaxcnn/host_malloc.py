"""Keep XLA:CPU's per-call buffers in the heap instead of fresh pages from the kernel.

XLA:CPU allocates the temporary buffer of every execution (125 MB for cnn3's train step at
batch 128) with ``posix_memalign`` on one of its worker threads and frees it when the call ends.
glibc serves an allocation that does not fit a thread arena (whose heaps are at most 64 MiB) with
a fresh ``mmap`` and gives it back with ``munmap`` on ``free``; so every train step faults in
about 30,000 zeroed 4 KiB pages again, and whichever op first writes into them pays for it
(measured: 31,500 minor page faults per cnn3 step, none inside :func:`reuse_freed_memory`, where
the train step with the ``onednn`` extra was 1.13x (cnn3) and 1.18x (resnet20) faster; in pure
JAX only evaluation gained: ``visuals/bench/README.md``).

Two settings (``mallopt``):

* :func:`share_main_arena`, which a *program* calls at its start (the experiments' ``main`` and
  the benchmarks do; a library import never does): every thread allocates from the main arena
  (``M_ARENA_MAX = 1``), the only one that can grow past 64 MiB (with ``brk``). A thread is
  bound to its arena at its first allocation, so call it before running JAX computations.
  Alone it changed neither speed nor memory noticeably (one cnn3 run).
* :func:`reuse_freed_memory`, a context manager (also a decorator) that the benchmarks run in,
  and ``jaxcnn.train.fit``'s host feed runs each epoch in when the compiled step's temporary
  buffer is at most 1 GiB (``jaxcnn.train.feeds.REUSE_LIMIT_BYTES``): no allocation is served
  by ``mmap`` (``M_MMAP_MAX = 0``) and up to 1 GiB freed at the top of the heap is kept
  (``M_TRIM_THRESHOLD``), so the step's buffers are reused. The price is resident memory:
  glibc cannot reuse a freed hole for an aligned request of the same size, so the heap grows by
  a few step buffers before it settles (a 5-epoch cnn3 run with the ``onednn`` extra: about
  +0.6 GB while training; for a step buffer of gigabytes, a fresh buffer every step: twice the
  memory and no gain, hence the limit). On exit ``mmap`` is allowed again and ``malloc_trim``
  returns the free pages to the kernel.

Any ``mallopt`` of these options switches off glibc's dynamic thresholds for good (by default
the mmap threshold rises to the size of the largest freed mapped chunk, up to 32 MiB, and the
trim threshold to twice that). So the exit does not put back the 128 KiB starting values, which
would send every allocation above 128 KiB to ``mmap`` for the rest of the process (measured: an
8 MB XLA temporary then faulted 3,968 pages per call after ``fit``, against none before); it
sets the values the dynamic thresholds grow to: mmap threshold 32 MiB, trim threshold 64 MiB.

``JAXCNN_MALLOC=default`` in the environment turns both off. Where the C library is not glibc
(or not Linux) both do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading

__all__ = ["ENV_VAR", "release_free_memory", "reuse_freed_memory", "share_main_arena", "state"]

ENV_VAR = "JAXCNN_MALLOC"

# <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Inside reuse_freed_memory: no mmap, 1 GiB kept at the top of the heap.
_REUSE = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30))
# After it: glibc's default mmap count, and the ceilings its dynamic thresholds grow to on a
# 64-bit system (DEFAULT_MMAP_THRESHOLD_MAX = 32 MiB; trim = 2 x mmap threshold).
_AFTER = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20))

_state = {"arena": "not applied", "depth": 0}
_lock = threading.Lock()


def _opted_out() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() == "default"


def _libc_to_tune():
    """glibc to tune, or None (opted out, or not glibc)."""
    return None if _opted_out() else _glibc()


@functools.cache
def _glibc():
    """glibc's ``CDLL`` with ``mallopt`` and ``malloc_trim`` typed, or None off glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        _ = libc.gnu_get_libc_version  # only glibc has it (musl does not)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt(libc, *settings: tuple[int, int]) -> bool:
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def share_main_arena() -> bool:
    """Let every thread created from now on allocate from glibc's main arena (process-wide:
    for programs, at their start, before JAX computations; the experiments call it).

    Returns:
      True when set; False when ``JAXCNN_MALLOC=default`` is set, off glibc, or refused.
    """
    libc = _libc_to_tune()
    if libc is None:
        _state["arena"] = f"off ({ENV_VAR}=default)" if _opted_out() else "off (not glibc)"
        return False
    ok = _mallopt(libc, (_M_ARENA_MAX, 1))
    _state["arena"] = "applied" if ok else "refused by glibc"
    return ok


@contextlib.contextmanager
def reuse_freed_memory():
    """Within this context glibc keeps freed memory for reuse instead of unmapping it.

    Nests (the outermost exit allows ``mmap`` again, with the thresholds of the module
    docstring, and calls ``malloc_trim(0)``); does nothing with ``JAXCNN_MALLOC=default`` or off
    glibc. Usable as a decorator: ``@reuse_freed_memory()``.
    """
    libc = _libc_to_tune()
    if libc is None:
        yield
        return
    with _lock:
        _state["depth"] += 1
        if _state["depth"] == 1:
            _mallopt(libc, *_REUSE)
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                _mallopt(libc, *_AFTER)
                libc.malloc_trim(0)


def release_free_memory() -> None:
    """Return the heap's free pages to the kernel (``malloc_trim(0)``), inside
    :func:`reuse_freed_memory` too, where glibc keeps them otherwise. ``fit`` calls it after
    every epoch: the heap's holes (freed step buffers that an aligned request of the same size
    cannot reuse) then stop adding to the resident memory from epoch to epoch; the next step
    faults its buffer in once. Does nothing with ``JAXCNN_MALLOC=default`` or off glibc."""
    libc = _libc_to_tune()
    if libc is not None:
        libc.malloc_trim(0)


def state() -> dict:
    """``{"arena": "applied" | "off (...)" | ..., "reusing": bool}``: what is set now."""
    return {"arena": _state["arena"], "reusing": _state["depth"] > 0}
