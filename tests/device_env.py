"""Environment for a subprocess that runs JAX on ``n`` fake CPU devices.

The device count is fixed when JAX starts, so multi-device checks run in a child process.
``XLA_FLAGS`` is extended, not replaced: it keeps what the test run set (tests/conftest.py).
"""

import os


def fake_cpu_devices_env(n: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) set up for ``n`` CPU devices."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(n),
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={n}"]),
    )
    return env
