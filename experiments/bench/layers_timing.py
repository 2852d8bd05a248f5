"""Timers of ``python -m experiments.bench layers``: the machine's float32 GEMM peak, one conv
shape's forward / input gradient / kernel gradient, and each other part of a train step alone
(BatchNorm, pooling, dropout, dense layers, the optimizer, augmentation, the host input).

Build and time inside ``jaxcnn.ops.backend.use(...)``: the layers are traced with its kernels.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from experiments.bench.common import time_interleaved, time_jitted
from experiments.bench.layers_trace import ConvShape, LayerGroup, Part
from jaxcnn.ops.backend import BACKENDS

GEMM_SIZES = (1024, 2048, 4096)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16")
DIRECTIONS = ("fwd", "dx", "dk")
CONV_KERNELS = tuple(b for b in BACKENDS if b != "auto")  # what resolve() can return
_DN = ("NHWC", "HWIO", "NHWC")


# --------------------------------------------------------------------------------------------
# The machine: CPU flags and the GEMM peak
# --------------------------------------------------------------------------------------------


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """``{"model": str, "cores": int, "flags": {flag: bool}}`` for ``CPU_FLAGS`` (flags None
    where ``path`` cannot be read, e.g. not Linux)."""
    model, flags = "unknown", None
    with contextlib.suppress(OSError):
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and flags is None:
                    flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores,
            "flags": {f: (None if flags is None else f in flags) for f in CPU_FLAGS}}


def gemm_peak(sizes: tuple[int, ...] = GEMM_SIZES, repeats: int = 3, seed: int = 0) -> dict:
    """Best float32 GFLOP/s of ``jnp.dot`` on (n, n) @ (n, n) for n in ``sizes`` (2 n^3 FLOPs
    each): ``{"gflops": best, "size": its n, "by_size": {str(n): GFLOP/s}}``."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    rng = np.random.default_rng(seed)
    by_size = {}
    for n in sizes:
        a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        ms = time_jitted(dot, a, b, repeats=repeats)
        by_size[str(n)] = 2.0 * n**3 / (ms * 1e6)
        del a, b
    best = max(by_size, key=by_size.get)
    return {"gflops": by_size[best], "size": int(best), "by_size": by_size}


# --------------------------------------------------------------------------------------------
# Timing one conv shape: forward, input gradient, kernel gradient
# --------------------------------------------------------------------------------------------


def conv_fn(impl: str) -> Callable:
    """``(x (N, H, W, C_in), kernel (kh, kw, C_in, C_out), stride (sh, sw), pads) -> (N, Ho,
    Wo, C_out)``: the function ``jaxcnn.models.layers.Conv`` runs on backend ``impl``:
    ``lax.conv_general_dilated`` ("lax"), ``conv2d_fast`` ("fast") or ``conv2d_onednn``
    ("onednn", which falls back to ``conv2d_fast`` where oneDNN cannot run)."""
    if impl == "fast":
        from jaxcnn.ops.fast_conv import conv2d_fast

        return conv2d_fast
    if impl == "onednn":
        from jaxcnn.ops.onednn import conv2d_onednn

        return conv2d_onednn
    if impl == "lax":
        from jax import lax

        def lax_conv(x, kernel, stride, pads):
            return lax.conv_general_dilated(x, kernel, stride, pads, dimension_numbers=_DN)

        return lax_conv
    raise ValueError(f"conv impl must be one of {CONV_KERNELS}; got {impl!r}")


def conv_direction_fns(shape: ConvShape) -> dict[str, Callable]:
    """Jitted ``(x, kernel, g) -> array`` for "fwd" (the conv, (N, Ho, Wo, C_out)), "dx" (vjp
    w.r.t. x only, (N, H, W, C_in)) and "dk" (vjp w.r.t. the kernel only, (kh, kw, C_in,
    C_out)); ``g`` (N, Ho, Wo, C_out) is the output cotangent."""
    import jax

    conv = conv_fn(shape.impl)

    def run(x, k):
        return conv(x, k, shape.stride, shape.pads)

    def fwd(x, k, g):
        return run(x, k)

    def dx(x, k, g):
        return jax.vjp(lambda x_: run(x_, k), x)[1](g)[0]

    def dk(x, k, g):
        return jax.vjp(lambda k_: run(x, k_), k)[1](g)[0]

    return {"fwd": jax.jit(fwd), "dx": jax.jit(dx), "dk": jax.jit(dk)}


def conv_inputs(shape: ConvShape, seed: int = 0) -> tuple:
    """Random float32 ``(x (N, H, W, C_in), kernel (kh, kw, C_in, C_out), g (N, Ho, Wo,
    C_out))`` on the default device."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    s = shape
    x = rng.standard_normal((s.n, s.h, s.w, s.c_in), dtype=np.float32)
    k = rng.standard_normal((s.kh, s.kw, s.c_in, s.c_out), dtype=np.float32)
    g = rng.standard_normal((s.n, s.ho, s.wo, s.c_out), dtype=np.float32)
    return jnp.asarray(x), jnp.asarray(k / np.sqrt(s.kh * s.kw * s.c_in)), jnp.asarray(g)


def time_conv(shape: ConvShape, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Median ms of fwd, dx and dk of ``shape``, timed round-robin after a warm-up."""
    return time_interleaved(conv_direction_fns(shape), conv_inputs(shape, seed),
                                     repeats=repeats)


def conv_row(group: LayerGroup, ms: dict[str, float], peak_gflops: float) -> dict:
    """The JSON row of one conv shape: its layers, FLOPs, ms / GFLOP/s / % of peak per
    direction and ``step_ms``, the ms it adds to a train step (fwd + dx + dk, dx left out for
    the layer reading the data, times the count)."""
    flops = group.shape.flops
    gflops = {d: flops / (ms[d] * 1e6) for d in DIRECTIONS}
    in_step = [d for d in DIRECTIONS if not (d == "dx" and group.reads_data)]
    return {
        "names": group.names,
        "count": group.count,
        **group.shape.to_dict(),
        "reads_data": group.reads_data,
        "gflop": flops / 1e9,
        "ms": ms,
        "gflops_per_s": gflops,
        "pct_peak": {d: 100.0 * v / peak_gflops for d, v in gflops.items()},
        "in_step": in_step,
        "step_ms": group.count * sum(ms[d] for d in in_step),
    }


# --------------------------------------------------------------------------------------------
# Timing the other parts of the step
# --------------------------------------------------------------------------------------------


def part_fwd_bwd(part: Part, seed: int = 0) -> tuple[Callable, tuple]:
    """Jitted ``(params, x, g, key) -> (grads, new state)`` of ``sum(g * y)``, y = the part on x
    (``part.in_shape``; ReLU after BatchNorm), w.r.t. the part's params and x (its forward
    included), and arguments for it; ``key`` feeds dropout, ``new state`` is BatchNorm's
    updated running statistics."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(part.in_shape, dtype=np.float32))
    key = jax.random.key(seed)
    if isinstance(part.layer, nn.Module):
        # Values near 1 (timing does not depend on them), shapes from an abstract init: an
        # eager init would run op by op, slower than the timing itself at small sizes.
        abstract = jax.eval_shape(part.layer.init, {"params": key, "dropout": key}, x)
        variables = jax.tree.map(
            lambda a: jnp.asarray(1.0 + 0.1 * rng.standard_normal(a.shape), a.dtype), abstract)
        params = variables.get("params", {})
        state = {k: v for k, v in variables.items() if k != "params"}
    else:
        params, state = {}, {}

    def forward(params, x, key):
        if not isinstance(part.layer, nn.Module):
            return part.layer(x), {}
        y, new = part.layer.apply({"params": params, **state}, x, rngs={"dropout": key},
                                  mutable=list(state))
        # nn.BatchNorm is followed by a ReLU in the nets; FusedBatchNorm applies its own.
        return (nn.relu(y) if isinstance(part.layer, nn.BatchNorm) else y), new

    g = jnp.asarray(rng.standard_normal(jax.eval_shape(forward, params, x, key)[0].shape,
                                        dtype=np.float32))

    def loss(params, x, g, key):
        y, new = forward(params, x, key)
        return jnp.sum(y * g), new

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    return jax.jit(grad), (params, x, g, key)


def time_parts(parts: list[Part], repeats: int = 5, seed: int = 0) -> dict[str, dict]:
    """``{kind: {"ms", "count", "shapes": [{"in", "count", "names", "ms_each"}]}}``: each
    distinct part's fwd+bwd timed alone (median), ``ms`` = sum of ms_each x count per kind."""
    out: dict[str, dict] = {}
    for part in parts:
        fn, args = part_fwd_bwd(part, seed)
        ms = time_jitted(fn, *args, repeats=repeats)
        entry = out.setdefault(part.kind, {"ms": 0.0, "count": 0, "shapes": []})
        entry["ms"] += ms * part.count
        entry["count"] += part.count
        entry["shapes"].append({"in": list(part.in_shape[1:]), "count": part.count,
                                "names": part.names, "ms_each": ms})
    return out


def time_optimizer(state, repeats: int = 5, seed: int = 0) -> float:
    """Median ms of ``state.apply_gradients(grads)`` (the step's optimizer update, jitted
    alone) with random gradients shaped like ``state.params``."""
    import jax

    rng = np.random.default_rng(seed)
    grads = jax.tree.map(
        lambda p: jax.numpy.asarray(1e-3 * rng.standard_normal(np.shape(p), dtype=np.float32),
                                    p.dtype), state.params)
    fn = jax.jit(lambda s, g: s.apply_gradients(g, batch_stats=s.batch_stats))
    return time_jitted(fn, state, grads, repeats=repeats)


def time_augment(config, images, repeats: int = 5, seed: int = 0) -> float:
    """Median ms of the step's preprocessing (``config``'s augmentation + normalisation, as
    ``jaxcnn.train.build`` sets it up) of ``images`` (B, 32, 32, 3) uint8, jitted alone."""
    import jax

    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.train import make_preprocess

    preprocess = make_preprocess(config, CIFAR10_MEAN, CIFAR10_STD)
    fn = jax.jit(preprocess.train)
    return time_jitted(fn, jax.random.key(seed), jax.numpy.asarray(images),
                                repeats=repeats)


def time_host_input(dataset, mesh, batch_size: int, repeats: int = 5, seed: int = 0) -> float:
    """Median ms to draw one host batch (``epoch_batches``) and copy it to the devices
    (``shard_batch``), as the timed train windows do before each step."""
    import jax

    from jaxcnn.data import epoch_batches
    from jaxcnn.train import shard_batch

    batches = epoch_batches(dataset, batch_size, seed=seed + 1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(shard_batch(mesh, *next(batches)))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)
