"""How long JAX spends compiling: the sum of its compile-duration events inside a block.

::

    with compile_clock() as compiling:
        state, metrics = train_step(state, images, labels)   # the first call compiles
    print(compiling.seconds)                                  # tracing + lowering + XLA

JAX reports each program's tracing (``jaxpr_trace_duration``), lowering to StableHLO
(``jaxpr_to_mlir_module_duration``) and XLA compilation (``backend_compile_duration``) through
:mod:`jax.monitoring`. The clock listens to those events for the duration of the block only (the
listener is removed on exit, so nothing outside the block changes); events from other threads
in that time are counted too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import jax

# The compile phases JAX times (``/jax/core/compile/...``), each counted once per program.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """The seconds of compilation seen so far (``seconds``), per event (``by_event``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_event: dict[str, float] = {}

    @property
    def seconds(self) -> float:
        with self._lock:
            return float(sum(self.by_event.values()))

    def _listen(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self.by_event[event] = self.by_event.get(event, 0.0) + float(duration)


@contextmanager
def compile_clock():
    """A :class:`CompileClock` that counts JAX's compile time inside the ``with`` block."""
    clock = CompileClock()
    jax.monitoring.register_event_duration_secs_listener(clock._listen)
    try:
        yield clock
    finally:
        jax.monitoring.unregister_event_duration_listener(clock._listen)


__all__ = ["COMPILE_EVENTS", "CompileClock", "compile_clock"]
