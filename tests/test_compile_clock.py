"""jaxcnn.train.compile_clock counts JAX's compile time inside its block only."""

import jax
import jax.numpy as jnp
import pytest

from jaxcnn.train.compile_clock import COMPILE_EVENTS, compile_clock


def test_counts_a_compilation_and_nothing_once_compiled():
    f = jax.jit(lambda x: jnp.tanh(x) @ x.T)
    x = jnp.ones((64, 32))
    with compile_clock() as first:
        f(x).block_until_ready()
    with compile_clock() as again:
        f(x).block_until_ready()  # cached: no compilation
    assert first.seconds > 0 and set(first.by_event) <= set(COMPILE_EVENTS)
    assert "/jax/core/compile/backend_compile_duration" in first.by_event
    assert first.seconds == pytest.approx(sum(first.by_event.values()))
    assert again.seconds == 0.0


def test_the_listener_is_gone_after_the_block():
    with compile_clock() as clock:
        pass
    jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()  # compiles, outside
    assert clock.seconds == 0.0
