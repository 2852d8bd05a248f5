"""Several processes, one training run: JAX's own multi-controller runtime.

Every process runs the same program over one global mesh (``jax.devices()`` of all hosts), loads
only its slice of every batch and gives the jitted step its rows
(``jax.make_array_from_process_local_data``); the step's collectives keep the replicas in step.
This module starts that runtime and says which process writes the run's files.

Launch, N processes (one per host, or several on one host):

* ``JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`` in each process's
  environment (``i`` = 0 .. N-1; process 0 hosts the coordinator at that address); or
* a cluster JAX detects itself: SLURM (``srun``), Open MPI (``mpirun``), Cloud TPU pod slices
  (the TPU VM's metadata), where nothing needs to be set.

:func:`initialize` (called by every experiment's command before anything else) then calls
``jax.distributed.initialize`` with those values, after switching the CPU backend's
collectives to gloo (without it, a CPU client has no cross-process collectives; on GPU/TPU
the setting is unused). Process 0 writes ``results.json``, bundles and figures
(:func:`is_primary`); checkpoints are written by all processes together (orbax, one copy).

Faults: :func:`initialize` starts a watchdog thread in each process. Every second it bumps
this process's counter in the coordinator's key-value store and reads the others'; a process
whose counter has not moved for ``JAXCNN_HEARTBEAT_TIMEOUT`` seconds (default 10), or an
unreachable coordinator (process 0 gone), makes the survivor print one line naming the lost
process and exit with status 3, instead of hanging in a collective or dying in JAX's own
fatal error (whose heartbeat timeout is set to three times as long, as a backstop). A process
that finishes marks itself done (:func:`mark_done`), so the others do not take its silence for
a loss. Checkpoints are atomic, so the run resumes when all processes are started again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import jax

__all__ = [
    "HEARTBEAT_ENV",
    "await_watchdog",
    "heartbeat_timeout",
    "initialize",
    "is_primary",
    "launch_settings",
    "mark_done",
    "stop_watchdog",
    "sync",
]

HEARTBEAT_ENV = "JAXCNN_HEARTBEAT_TIMEOUT"
_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# A world size above 1 in one of these means a cluster launcher started this process.
_CLUSTER_SIZES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
_TPU_POD = "MEGASCALE_COORDINATOR_ADDRESS"


def _int(environ, name: str, low: int) -> int:
    value = environ.get(name, "").strip()
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    return number


def launch_settings(environ=None) -> dict | None:
    """What ``jax.distributed.initialize`` needs, read from ``environ`` (default os.environ).

    Returns:
      ``{"coordinator_address", "num_processes", "process_id"}`` for the explicit ``JAX_*``
      launch; ``{}`` for a cluster JAX detects itself (SLURM or Open MPI with more than one
      task, a TPU pod); None for a single process.

    Raises:
      ValueError: some but not all of the three ``JAX_*`` variables are set, or a bad value
        (a process id outside ``0 .. N-1``, a count below 1, an address without a port).
    """
    environ = os.environ if environ is None else environ
    given = [k for k in _EXPLICIT if environ.get(k, "").strip()]
    if given:
        missing = [k for k in _EXPLICIT if k not in given]
        if missing:
            raise ValueError(
                f"a multi-process launch sets all of {', '.join(_EXPLICIT)}; "
                f"{', '.join(missing)} missing (got {', '.join(given)})"
            )
        address = environ["JAX_COORDINATOR_ADDRESS"].strip()
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port, "
                             "e.g. 127.0.0.1:12357 (the address of process 0)")
        n = _int(environ, "JAX_NUM_PROCESSES", 1)
        i = _int(environ, "JAX_PROCESS_ID", 0)
        if i >= n:
            raise ValueError(f"JAX_PROCESS_ID={i} with JAX_NUM_PROCESSES={n}: the ids are "
                             f"0 .. {n - 1}")
        if n == 1:
            return None
        return {"coordinator_address": address, "num_processes": n, "process_id": i}
    for name in _CLUSTER_SIZES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 1:
            return {}
    return {} if environ.get(_TPU_POD, "").strip() else None


def heartbeat_timeout(environ=None) -> int:
    """Seconds of silence after which the watchdog declares a process lost (JAX's own
    heartbeat timeout is set to three times this)."""
    environ = os.environ if environ is None else environ
    return _int(environ, HEARTBEAT_ENV, 1) if environ.get(HEARTBEAT_ENV, "").strip() else 10


def initialize(environ=None) -> bool:
    """Join the multi-process run the environment describes (see the module docstring), and
    start the watchdog thread that stops this process when another one is lost.

    For programs (it changes the process: JAX's runtime, a thread): call it first, before any
    other JAX computation. Returns True when this call initialised the runtime, False on a
    single process or when it is already initialised.
    """
    settings = launch_settings(environ)
    if settings is None or jax.distributed.is_initialized():
        return False
    timeout = heartbeat_timeout(environ)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings, heartbeat_timeout_seconds=3 * timeout)
    for name in ("absl", ""):  # orbax logs through absl's logger; others to the root
        logging.getLogger(name).addFilter(_quiet_lost_peer)
    _start_watchdog(timeout)
    return True


def _quiet_lost_peer(record: logging.LogRecord) -> bool:
    """Logging filter: drop the traceback a background thread (orbax's asynchronous
    checkpoint save) logs when a collective fails because a peer closed its connection. The
    peer is lost, and the watchdog says so in one line and stops this process."""
    err = record.exc_info[1] if record.exc_info else None
    return not (isinstance(err, jax.errors.JaxRuntimeError)
                and "Connection closed by peer" in str(err))


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; always true alone). Does not
    start a JAX backend in a single-process program."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for alone)."""
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


_ALIVE = "jaxcnn/alive/"
_DONE = "jaxcnn/done/"


def _client():
    from jax._src import distributed  # the runtime's client and its key-value store

    return distributed.global_state.client


# The watchdog thread and the event that ends it (set by mark_done).
_WATCHDOG: dict = {"thread": None, "stop": threading.Event()}


def mark_done() -> None:
    """Tell the other processes that this one finished: its silence is no loss. Then stop this
    process's watchdog and wait for it, so that no call of it into the runtime's client is in
    flight when JAX shuts the client down at exit (one was: a C++ abort, 'exception not
    rethrown', after a finished run)."""
    client = _client()
    if client is None:
        return
    try:
        client.key_value_set(f"{_DONE}{jax.process_index()}", "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001 (the coordinator is already gone: nobody to tell)
        pass
    stop_watchdog()


def stop_watchdog(timeout: float = 10.0) -> None:
    """End the watchdog thread (if any) and wait up to ``timeout`` s for it."""
    _WATCHDOG["stop"].set()
    thread = _WATCHDOG["thread"]
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def _stop(who: str, n: int, me: int, why: str) -> None:
    print(f"error: lost {who} of {n} ({why}: it stopped or was killed); process {me} stops "
          f"too. Start all {n} processes again with the same command to resume from the last "
          "checkpoint", file=sys.stderr, flush=True)
    os._exit(3)  # from a thread: the main thread may be blocked in a collective


def _watch(client, me: int, n: int, timeout: float, interval: float = 1.0) -> None:
    """The watchdog loop (module docstring): ends the process when a peer is lost; returns
    when :func:`stop_watchdog` is called."""
    beat, last, moved = 0, {}, {}
    peers = [str(p) for p in range(n) if p != me]
    stop = _WATCHDOG["stop"]
    while not stop.is_set():
        beat += 1
        try:
            client.key_value_set(f"{_ALIVE}{me}", str(beat), allow_overwrite=True)
            alive = {k.rsplit("/", 1)[-1]: v for k, v in client.key_value_dir_get(_ALIVE)}
            done = {k.rsplit("/", 1)[-1] for k, _ in client.key_value_dir_get(_DONE)}
        except Exception:  # noqa: BLE001 (an RPC failure: the coordinator is unreachable)
            if stop.is_set():
                return
            if me != 0:
                _stop("the coordinator, process 0", n, me, "unreachable")
            stop.wait(interval)
            continue
        now = time.monotonic()
        lost = []
        for peer in peers:
            if peer in done:
                continue
            if peer not in moved or alive.get(peer) != last[peer]:
                last[peer], moved[peer] = alive.get(peer), now
            elif now - moved[peer] > timeout:
                lost.append(peer)
        if lost and not stop.is_set():
            _stop(", ".join(f"process {p}" for p in lost), n, me,
                  f"no sign of life for {timeout:.0f} s")
        stop.wait(interval)


def await_watchdog() -> None:
    """After an error in a multi-process run: wait long enough for the watchdog to find a lost
    process (it then ends this one with its line); return at once in a single process."""
    if _client() is not None:
        time.sleep(heartbeat_timeout() + 3)


def _start_watchdog(timeout: float) -> None:
    args = (_client(), jax.process_index(), jax.process_count(), timeout)
    _WATCHDOG["stop"].clear()
    thread = threading.Thread(target=_watch, args=args, name="jaxcnn-watchdog", daemon=True)
    _WATCHDOG["thread"] = thread
    thread.start()
