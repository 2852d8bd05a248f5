"""Environment variables for a subprocess that runs JAX on ``n`` fake CPU devices.

The device count is fixed when JAX starts, so multi-device checks run in a child process.
``XLA_FLAGS`` is extended, not replaced: it keeps what the test run set (tests/conftest.py).
"""

import os


def fake_cpu_devices(n: int) -> dict[str, str]:
    """``JAX_PLATFORMS``, ``JAX_NUM_CPU_DEVICES`` and ``XLA_FLAGS`` for ``n`` CPU devices."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return dict(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(n),
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={n}"]),
    )
