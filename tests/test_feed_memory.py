"""The host feed keeps freed memory for reuse (jaxcnn.host_malloc) only for a train step whose
temporary buffer is small: with a large one, glibc's heap grows by a buffer a step instead."""

import jax
import pytest
from tiny_data import tiny_cifar

from jaxcnn import host_malloc, models
from jaxcnn.train import FitConfig, build, feeds


def _engine(batch_size=32):
    train = tiny_cifar(64, 0)
    model = models.create("cnn3", num_classes=10, filters=(4,), dropouts=(0.1,), dense=8)
    config = FitConfig(epochs=1, batch_size=batch_size, augment=False)
    return build(model, config, train), train


def test_step_temp_bytes_reads_the_compiled_step_and_grows_with_the_batch():
    small, train = _engine(16)
    large, _ = _engine(64)
    sizes = [feeds.step_temp_bytes(e.train_step, e.state, e.config.batch_size,
                                   train.images.shape[1:]) for e in (small, large)]
    if sizes[0] is None:
        pytest.skip("this backend reports no memory analysis")
    assert 0 < sizes[0] < sizes[1]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU host path only")
@pytest.mark.parametrize("limit, reuse", [(1 << 30, True), (0, False)])
def test_feed_reuses_freed_memory_only_below_the_limit(monkeypatch, limit, reuse):
    monkeypatch.setattr(feeds, "REUSE_LIMIT_BYTES", limit)
    engine, train = _engine(32)
    feed = feeds.make_feed(engine, train)
    assert isinstance(feed, feeds.HostFeed) and feed.reuse_memory is reuse
    seen, states = [], []
    for state, _, _ in feed.epoch(engine.state, 0):
        seen.append(host_malloc.state()["reusing"])
        states.append(state)
    expect = reuse and host_malloc._libc_to_tune() is not None
    assert seen == [expect] * 2
    assert host_malloc.state()["reusing"] is False  # the epoch's context has ended
    assert int(jax.device_get(states[-1].step)) == 2


def test_reading_the_buffer_size_does_not_compile_the_step_twice(monkeypatch, tmp_path):
    """The feed compiles the step ahead with the shardings of the real call, so the first step
    reuses that program: a fit compiles as many programs as one whose feed does not ask."""
    from jaxcnn.train import fit
    from jaxcnn.train.compile_clock import compile_clock

    model = models.create("cnn3", num_classes=10, filters=(4,), dropouts=(0.1,), dense=8)
    train = tiny_cifar(96, 0)

    def compiles(name):
        config = FitConfig(epochs=1, batch_size=24, augment=False)
        jax.clear_caches()  # everything compiles afresh

        def listen(event, _seconds, **_):
            if event.endswith("backend_compile_duration"):
                counts.append(event)

        counts = []
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            with compile_clock() as clock:
                fit(model, train, None, config=config, workdir=tmp_path / name,
                    progress=False, verbose=False)
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
        assert clock.seconds > 0
        return len(counts)

    asked = compiles("asked")
    monkeypatch.setattr(feeds, "step_temp_bytes", lambda *a, **k: None)
    assert compiles("not_asked") == asked
