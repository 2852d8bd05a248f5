"""jaxcnn.host_malloc: in a program that shares glibc's main arena at its start (as the
experiments' commands do), XLA:CPU's per-call buffers stop faulting in fresh pages inside
``reuse_freed_memory`` (which ``fit`` runs steps with small buffers in);
``JAXCNN_MALLOC=default`` keeps glibc's behaviour. ``import jaxcnn`` alone sets nothing
(tests/test_backends.py)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# A jitted function whose temporary (sin(x), 3000 x 4096 float32 = 49 MB = 12,000 pages) is
# written on an XLA worker thread each call. Reports, outside and inside reuse_freed_memory,
# the median over 15 calls of the minor page faults per call: while the heap grows to its
# peak a few calls still fault, and the median skips them. After the context, the same for a
# function with 8 MB temporaries (4000 x 512 float32, 2,000 pages), which glibc's grown dynamic
# mmap threshold keeps in the heap.
_PROBE = r"""
import json, resource
import jaxcnn
from jaxcnn import host_malloc
host_malloc.share_main_arena()  # what a program does at its start (experiments._cli.run)
import jax, jax.numpy as jnp

def probe(n, m):
    return jax.jit(lambda x: (jnp.sin(x) @ jnp.ones((m, 4))).sum() + jnp.cos(x).T.sum(0)[0]), \
        jnp.ones((n, m), jnp.float32)

def median_faults(f, x):
    jax.block_until_ready(f(x))
    counts = []
    for _ in range(15):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(f(x))
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(counts)[len(counts) // 2]

big, mid = probe(3000, 4096), probe(4000, 512)
outside = median_faults(*big)
with host_malloc.reuse_freed_memory():
    inside = median_faults(*big)
    state_inside = host_malloc.state()
print(json.dumps({"outside": outside, "inside": inside, "state_inside": state_inside,
                  "state_after": host_malloc.state(), "mid_after": median_faults(*mid)}))
"""
TEMP_PAGES = 3000 * 4096 * 4 // 4096
MID_PAGES = 4000 * 512 * 4 // 4096


def _probe(malloc_env: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAXCNN_MALLOC"}
    env["JAX_PLATFORMS"] = "cpu"
    if malloc_env is not None:
        env["JAXCNN_MALLOC"] = malloc_env
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reuse_freed_memory_stops_page_faults_of_xla_buffers():
    r = _probe(None)
    assert r["state_inside"] == {"arena": "applied", "reusing": True}
    assert r["state_after"] == {"arena": "applied", "reusing": False}
    # glibc's default: the temporary comes from a fresh mmap each call, every page faults.
    assert r["outside"] > 0.8 * TEMP_PAGES, r
    # kept in the heap: reused pages, (almost) no faults.
    assert r["inside"] < 0.05 * TEMP_PAGES, r
    # after the context, 8 MB temporaries still come from the heap (not one mmap per call, as
    # glibc's 128 KiB starting threshold would give once mallopt froze the dynamic one).
    assert r["mid_after"] < 0.05 * MID_PAGES, r


def test_env_opt_out_keeps_glibc_defaults():
    r = _probe("default")
    assert r["state_inside"] == {"arena": "off (JAXCNN_MALLOC=default)", "reusing": False}
    assert r["inside"] > 0.8 * TEMP_PAGES, r


def test_reuse_freed_memory_nests_and_decorates(monkeypatch):
    from jaxcnn import host_malloc

    monkeypatch.delenv("JAXCNN_MALLOC", raising=False)

    @host_malloc.reuse_freed_memory()
    def inner():
        return host_malloc.state()["reusing"]

    with host_malloc.reuse_freed_memory():
        assert inner() is True
        assert host_malloc.state()["reusing"] is True  # the inner exit kept the outer setting
    assert host_malloc.state()["reusing"] is False
    with pytest.raises(RuntimeError), host_malloc.reuse_freed_memory():
        raise RuntimeError("restored on errors too")
    assert host_malloc.state()["reusing"] is False


def test_a_command_shares_the_arena_and_a_plain_import_does_not():
    """experiments._cli.run (every ``python -m experiments.<lesson>``) sets it; importing the
    library (its models and engine too) sets nothing, nor the kernel setting."""
    code = (
        "import os, jaxcnn, jaxcnn.models, jaxcnn.train\n"
        "from experiments import _cli; from jaxcnn import host_malloc\n"
        "before = host_malloc.state()['arena']\n"
        "assert 'JAXCNN_BACKEND' not in os.environ\n"
        "_cli.run(lambda argv: print(before, '|', host_malloc.state()['arena']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JAXCNN_MALLOC", "JAXCNN_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "not applied | applied"
