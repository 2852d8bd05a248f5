"""jaxcnn.distributed without a second process: what the launch environment means, process 0
as the only writer, and the watchdog's verdicts (a stub key-value store stands in for the
coordinator). The real two-process runs are in tests/test_multiprocess.py."""

import pytest

from jaxcnn import distributed

ADDR = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12357"}


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({**ADDR, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"coordinator_address": "127.0.0.1:12357", "num_processes": 2, "process_id": 1}),
    ({**ADDR, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}, None),  # one process: nothing
    ({"SLURM_NTASKS": "4"}, {}),            # JAX's own cluster detection fills the rest
    ({"SLURM_NTASKS": "1"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2:8080"}, {}),
])
def test_launch_settings(environ, expected):
    assert distributed.launch_settings(environ) == expected


@pytest.mark.parametrize("environ, message", [
    (ADDR, r"sets all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; "
           r"JAX_NUM_PROCESSES, JAX_PROCESS_ID missing"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, r"JAX_COORDINATOR_ADDRESS missing"),
    ({**ADDR, "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     r"JAX_NUM_PROCESSES='two': expected an integer >= 1"),
    ({**ADDR, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID=2 with JAX_NUM_PROCESSES=2: the ids are 0 .. 1"),
    ({**ADDR, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"},
     r"JAX_PROCESS_ID='-1': expected an integer >= 0"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     r"expected host:port"),
])
def test_bad_launch_is_one_clear_error(environ, message):
    with pytest.raises(ValueError, match=message):
        distributed.launch_settings(environ)


def test_heartbeat_timeout_setting():
    assert distributed.heartbeat_timeout({}) == 10
    assert distributed.heartbeat_timeout({distributed.HEARTBEAT_ENV: "3"}) == 3
    with pytest.raises(ValueError, match="JAXCNN_HEARTBEAT_TIMEOUT='0'"):
        distributed.heartbeat_timeout({distributed.HEARTBEAT_ENV: "0"})


def test_a_single_process_is_primary_and_initialises_nothing():
    assert distributed.initialize({}) is False
    assert distributed.is_primary()
    distributed.sync("nothing to wait for")
    distributed.mark_done()  # no runtime: a no-op
    distributed.await_watchdog()  # returns at once


class StubStore:
    """The two key-value calls the watchdog makes; ``frozen`` peers stop counting, ``done``
    peers have finished, ``down`` makes every call fail (the coordinator is gone)."""

    def __init__(self, n, frozen=(), done=(), down=False):
        self.n, self.frozen, self.done, self.down, self.beats = n, set(frozen), set(done), down, 0

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect")
        self.beats += 1

    def key_value_dir_get(self, prefix):
        if prefix.endswith("done/"):
            return [(f"{prefix}{p}", "1") for p in self.done]
        return [(f"{prefix}{p}", "0" if p in self.frozen else str(self.beats))
                for p in range(self.n)]


@pytest.fixture
def stopped(monkeypatch, capsys):
    """Run the watchdog loop until it stops the process; returns its stderr line."""
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(distributed.time, "monotonic", lambda: float(next(clock)))

    class Stopped(Exception):
        pass

    def exit_(code):
        raise Stopped(code)

    monkeypatch.setattr(distributed.os, "_exit", exit_)

    def run(store, me):
        with pytest.raises(Stopped) as info:
            distributed._watch(store, me, store.n, timeout=10)
        assert info.value.args == (3,)
        return capsys.readouterr().err.strip()
    return run


def test_watchdog_names_a_silent_process(stopped):
    line = stopped(StubStore(3, frozen={2}), me=0)
    assert line.startswith("error: lost process 2 of 3 (no sign of life for 10 s")
    assert "Start all 3 processes again with the same command to resume" in line


def test_watchdog_names_a_lost_coordinator(stopped):
    line = stopped(StubStore(2, down=True), me=1)
    assert line.startswith("error: lost the coordinator, process 0 of 2 (unreachable")


def test_watchdog_leaves_finished_processes_alone(monkeypatch):
    """A peer marked done is silent but not lost: the loop goes on (stopped here after 50
    rounds by the test's clock)."""
    rounds = iter(range(50))
    monkeypatch.setattr(distributed.time, "monotonic", lambda: float(next(rounds)))
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    monkeypatch.setattr(distributed.os, "_exit", lambda code: pytest.fail("stopped"))
    with pytest.raises(StopIteration):
        distributed._watch(StubStore(2, frozen={1}, done={1}), 0, 2, timeout=10)
