"""Where every millisecond of a train step goes: ``python -m experiments.bench layers``.

For each model (default ``cnn3`` and ``resnet20``, batch 128, float32):

* every distinct convolution shape of the model, found by tracing it (``nn.intercept_methods``
  on ``jaxcnn.models.layers.Conv`` / ``nn.Conv`` calls during an abstract ``init``), with how
  many layers share it; each timed three ways, each separately jitted: forward, input gradient
  (``jax.vjp`` w.r.t. x only) and kernel gradient (``jax.vjp`` w.r.t. the kernel only), with
  the function the model's ``Conv`` runs for the chosen ``--conv-impl``
  (``jaxcnn.ops.fast_conv.conv2d_fast`` for "fast", ``lax.conv_general_dilated`` for "lax");
  GFLOP/s of each (FLOPs = ``2*N*Ho*Wo*kh*kw*Cin*Cout`` for all three) and its % of the peak;
* the whole train step (the jitted step of the model's recipe, augmentation included, timed
  as ``experiments.bench train`` times it: host batch, copy, step, in windows of ``--steps``
  steps) and each conv shape's share of it (fwd + dx + dk, times its layer count; the layer
  that reads the data gets no input gradient in the step, so its dx is left out);
* "rest of step" = step - all convs: BatchNorm, pooling, dropout masks, dense layers, the
  optimizer, augmentation. Its main parts are also timed alone, on the shapes the model runs
  them at (found by the same tracing): BatchNorm+ReLU, max-pool and dropout (mask + apply)
  forward+backward, dense layers forward+backward, the optimizer update, augmentation +
  normalisation and the host input (batch gather + copy); what is left is "unaccounted"
  (the loss, residual adds, fusion effects, overlap).

The peak is the best GFLOP/s of large float32 ``jnp.dot`` GEMMs (``--gemm-sizes`` square),
stated in the header with the CPU's flags (avx2 / avx512f / avx512_bf16) and jax's version.
Conv timings are medians of ``--repeats`` round-robin calls (fwd, dx, dk in turn) after a
warm-up; the step's, the median of ``--repeats`` windows after ``--warmup`` steps.
``--json PATH`` also writes the results as one JSON object (``-``: print only the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from experiments import _cli
from experiments._cli import positive_int
from jaxcnn.host_malloc import reuse_freed_memory

LAYER_MODELS = ("cnn3", "resnet20")
GEMM_SIZES = (1024, 2048, 4096)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16")
DIRECTIONS = ("fwd", "dx", "dk")
REST_LABEL = "BatchNorm, pooling, dropout mask, dense layers, optimizer, augmentation"
PART_LABELS = {
    "batchnorm": "BatchNorm+ReLU fwd+bwd",
    "batchnorm_pool": "BatchNorm+ReLU+max-pool fwd+bwd",
    "maxpool": "max-pool fwd+bwd",
    "dropout": "dropout (mask + apply) fwd+bwd",
    "dense": "dense layers fwd+bwd",
    "optimizer": "optimizer update",
    "augment": "augmentation + normalisation",
    "host": "host batch gather + copy",
}
_DN = ("NHWC", "HWIO", "NHWC")


def _bench() -> ModuleType:
    """The running ``experiments.bench``: ``__main__`` under ``python -m experiments.bench`` (a
    fresh ``import experiments.bench`` there would be a second module with its own subcommand
    list), else the imported module."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "experiments.bench":
        return main
    from experiments import bench

    return bench


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

    bench = _bench()
    dot = jax.jit(jnp.dot)
    rng = np.random.default_rng(seed)
    by_size = {}
    for n in sizes:
        a = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        ms = bench.time_jitted(dot, a, b, repeats=repeats)
        by_size[str(n)] = 2.0 * n**3 / (ms * 1e6)
        del a, b
    best = max(by_size, key=by_size.get)
    return {"gflops": by_size[best], "size": int(best), "by_size": by_size}


# --------------------------------------------------------------------------------------------
# Tracing a model: its convolutions and the other parts of its forward pass
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution as a model runs it: x (n, h, w, c_in) * kernel (kh, kw, c_in, c_out),
    ``stride`` (sh, sw), explicit ``pads`` ((top, bottom), (left, right)) -> (n, ho, wo,
    c_out), computed by ``Conv(impl=impl)``."""

    n: int
    h: int
    w: int
    c_in: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    ho: int
    wo: int
    impl: str

    @property
    def flops(self) -> int:
        """FLOPs of the forward pass, and of each gradient: 2*N*Ho*Wo*kh*kw*Cin*Cout (padded
        taps included)."""
        return 2 * self.n * self.ho * self.wo * self.kh * self.kw * self.c_in * self.c_out

    def to_dict(self) -> dict:
        return {"in": [self.h, self.w, self.c_in], "out": [self.ho, self.wo, self.c_out],
                "kernel": [self.kh, self.kw], "stride": list(self.stride),
                "pads": [list(p) for p in self.pads], "impl": self.impl}


@dataclasses.dataclass
class LayerGroup:
    """The conv layers of one model that share a ``ConvShape``: their names (module paths) and
    whether they read the model's input (the data: the step needs no input gradient there)."""

    shape: ConvShape
    names: list[str]
    reads_data: bool = False

    @property
    def count(self) -> int:
        return len(self.names)


@dataclasses.dataclass
class Part:
    """A distinct non-conv piece of the forward pass (``kind`` in ``PART_LABELS``): its input
    shape, the layers that run it, and ``layer``: an unbound Flax module or ``x -> y``."""

    kind: str
    in_shape: tuple[int, ...]
    names: list[str]
    layer: Any

    @property
    def count(self) -> int:
        return len(self.names)


def _conv_types() -> tuple[type, ...]:
    import flax.linen as nn

    from jaxcnn.models.layers import Conv

    return (Conv, nn.Conv)


def _conv_shape(module, x_shape, y_shape) -> ConvShape | None:
    """The ``ConvShape`` of a ``Conv`` / ``nn.Conv`` call on x (N, H, W, C) giving y (N, Ho,
    Wo, O); None for grouped, dilated, circular or non-2-D convolutions (left in "rest")."""
    from jaxcnn.ops.fast_conv import resolve_padding

    if len(x_shape) != 4 or getattr(module, "feature_group_count", 1) != 1:
        return None
    if any(d != 1 for d in np.ravel(getattr(module, "kernel_dilation", None) or 1)):
        return None
    ks = module.kernel_size
    kh, kw = (ks, ks) if isinstance(ks, int) else tuple(ks)
    s = module.strides or 1
    stride = (s, s) if isinstance(s, int) else tuple(s)
    try:
        pads = resolve_padding(module.padding, x_shape[1:3], (kh, kw), stride)
    except ValueError:  # e.g. nn.Conv's "CIRCULAR"
        return None
    n, h, w, c_in = (int(d) for d in x_shape)
    return ConvShape(n, h, w, c_in, int(y_shape[-1]), kh, kw, stride, pads,
                     int(y_shape[1]), int(y_shape[2]), getattr(module, "impl", "lax"))


def _module_part(module) -> tuple[str, tuple] | None:
    """``(kind, distinguishing attributes)`` of a BatchNorm / Dropout / Dense call, else None.
    ``layers.FusedBatchNorm`` includes its ReLU, and with ``pool`` its max pool
    ("batchnorm_pool")."""
    import flax.linen as nn

    from jaxcnn.models.layers import FusedBatchNorm

    if isinstance(module, FusedBatchNorm):
        return ("batchnorm_pool" if module.pool else "batchnorm"), (module.relu,)
    if isinstance(module, nn.BatchNorm):
        return "batchnorm", ()
    if isinstance(module, nn.Dropout) and module.rate > 0:
        return "dropout", (module.rate,)
    if isinstance(module, nn.Dense):
        return "dense", (module.features, module.use_bias)
    return None


def _path(module) -> str:
    scope = getattr(module, "scope", None)
    return "/".join(scope.path) if scope is not None else type(module).__name__


@contextlib.contextmanager
def _recording_pools(model, record: Callable) -> Iterator[None]:
    """While active, calls of ``max_pool_2x2`` from the model's own module are recorded as
    ``record("maxpool", x_shape, (impl,), name, fn)``: pooling is a function, not a module, so
    ``nn.intercept_methods`` does not see it."""
    from unittest import mock

    module = sys.modules.get(type(model).__module__)
    original = getattr(module, "max_pool_2x2", None)
    if original is None:
        yield
        return
    calls = []

    def recording(x, impl="fast"):
        calls.append(None)
        record("maxpool", tuple(x.shape), (impl,), f"max_pool_2x2#{len(calls)}",
               lambda v: original(v, impl))
        return original(x, impl)

    with mock.patch.object(module, "max_pool_2x2", recording):
        yield


def trace_model(model, input_shape: tuple[int, ...]) -> tuple[list[LayerGroup], list[Part]]:
    """The conv layers (grouped by shape, in order of first use) and the other parts of one
    train-mode forward pass of ``model`` on x ``input_shape`` (N, H, W, C), found without
    computing anything (``jax.eval_shape`` of ``model.init``)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    groups: dict[ConvShape, LayerGroup] = {}
    parts: dict[tuple, Part] = {}
    model_input = []

    def record(kind, in_shape, attrs, name, layer):
        key = (kind, in_shape, attrs)
        if key not in parts:
            parts[key] = Part(kind, in_shape, [], layer)
        parts[key].names.append(name)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module, x = context.module, args[0] if args else None
        if context.method_name != "__call__" or not hasattr(x, "shape"):
            return out
        if isinstance(module, _conv_types()):
            shape = _conv_shape(module, tuple(x.shape), tuple(out.shape))
            if shape is not None:
                group = groups.setdefault(shape, LayerGroup(shape, []))
                group.names.append(_path(module))
                group.reads_data |= x is model_input[0]
        elif (kind := _module_part(module)) is not None:
            record(kind[0], tuple(x.shape), kind[1], _path(module),
                   module.clone(parent=None, name=None))
        return out

    def init(x):
        model_input.append(x)
        keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        return model.init(keys, x, train=True)

    with nn.intercept_methods(interceptor), _recording_pools(model, record):
        jax.eval_shape(init, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return list(groups.values()), list(parts.values())


# --------------------------------------------------------------------------------------------
# Timing one conv shape: forward, input gradient, kernel gradient
# --------------------------------------------------------------------------------------------


def conv_fn(impl: str) -> Callable:
    """``(x (N, H, W, C_in), kernel (kh, kw, C_in, C_out), stride (sh, sw), pads) -> (N, Ho,
    Wo, C_out)``: what ``jaxcnn.models.layers.Conv(impl=impl)`` computes, with the same
    function: ``conv2d_fast`` ("fast"), ``lax.conv_general_dilated`` ("lax"); an impl added
    to ``CONV_IMPLS`` later runs through the layer itself (without bias)."""
    from jaxcnn.models.layers import CONV_IMPLS, Conv

    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}; got {impl!r}")
    if impl == "fast":
        from jaxcnn.ops.fast_conv import conv2d_fast

        return conv2d_fast
    if impl == "lax":
        from jax import lax

        def lax_conv(x, kernel, stride, pads):
            return lax.conv_general_dilated(x, kernel, stride, pads, dimension_numbers=_DN)

        return lax_conv

    def layer_conv(x, kernel, stride, pads):
        layer = Conv(kernel.shape[-1], kernel.shape[:2], stride, use_bias=False, impl=impl,
                     padding=pads)
        return layer.apply({"params": {"kernel": kernel}}, x)

    return layer_conv


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
    return _bench().time_interleaved(conv_direction_fns(shape), conv_inputs(shape, seed),
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
    bench = _bench()
    out: dict[str, dict] = {}
    for part in parts:
        fn, args = part_fwd_bwd(part, seed)
        ms = bench.time_jitted(fn, *args, repeats=repeats)
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
    return _bench().time_jitted(fn, state, grads, repeats=repeats)


def time_augment(config, images, repeats: int = 5, seed: int = 0) -> float:
    """Median ms of the step's preprocessing (``config``'s augmentation + normalisation, as
    ``jaxcnn.train.build`` sets it up) of ``images`` (B, 32, 32, 3) uint8, jitted alone."""
    import jax

    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.train import make_preprocess

    preprocess = make_preprocess(config, CIFAR10_MEAN, CIFAR10_STD)
    fn = jax.jit(preprocess.train)
    return _bench().time_jitted(fn, jax.random.key(seed), jax.numpy.asarray(images),
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


# --------------------------------------------------------------------------------------------
# The whole train step, and one model's table
# --------------------------------------------------------------------------------------------


def time_train_step(name: str, model, batch_size: int, steps: int = 10, repeats: int = 5,
                    warmup: int = 2, seed: int = 0) -> dict:
    """The model's recipe train step timed as ``experiments.bench train`` does (same case
    class: host batch + copy + jitted step, device sync at window ends): ``{"ms", "warmup_s",
    "case"}``, ms = median over ``repeats`` windows of ``steps`` steps, after ``warmup``
    steps (compilation included in ``warmup_s``)."""
    from jaxcnn.train import make_mesh

    bench = _bench()
    dataset = bench.synthetic_cifar(max(8 * batch_size, 256), seed=seed)
    case = bench._TrainCase(name, batch_size, dataset, make_mesh(), model, "float32", seed)
    t0 = time.perf_counter()
    case.train_window(warmup)
    warmup_s = time.perf_counter() - t0
    windows = [case.train_window(steps) for _ in range(repeats)]
    return {"ms": 1e3 * statistics.median(windows) / steps, "warmup_s": warmup_s, "case": case}


def rest_parts(parts: list[Part], case, repeats: int = 5, seed: int = 0) -> dict[str, dict]:
    """The parts of the step besides convs, each timed alone: the traced layers
    (:func:`time_parts`), the optimizer, augmentation and the host input."""
    out = time_parts(parts, repeats=repeats, seed=seed)
    images = case.dataset.images[: case.batch_size]
    out["optimizer"] = {"ms": time_optimizer(case.state, repeats, seed), "count": 1,
                        "optimizer": case.config.optimizer}
    out["augment"] = {"ms": time_augment(case.config, images, repeats, seed), "count": 1,
                      "augment": bool(case.config.augment)}
    out["host"] = {"ms": time_host_input(case.dataset, case.mesh, case.batch_size,
                                         repeats=max(repeats, 3), seed=seed), "count": 1}
    return out


def make_model(name: str, conv_impl: str, model_options: dict):
    """``jaxcnn.models.create(name)`` with ``--model-option``s and ``conv_impl`` set (through
    the option, or on the module when the registry does not expose it)."""
    from jaxcnn.models import create

    model = create(name, num_classes=10, **_bench().options_for(name, model_options))
    if hasattr(model, "conv_impl") and model.conv_impl != conv_impl:
        model = model.clone(conv_impl=conv_impl)
    return model


def bench_model(name: str, conv_impl: str = "auto", batch_size: int = 128, repeats: int = 5,
                steps: int = 10, warmup: int = 2, peak_gflops: float = 1.0,
                model_options: dict | None = None, seed: int = 0) -> dict:
    """One model's results: conv rows, the step, the rest and its parts (JSON-ready)."""
    model = make_model(name, conv_impl, model_options or {})
    groups, parts = trace_model(model, (batch_size, 32, 32, 3))
    rows = [conv_row(g, time_conv(g.shape, repeats, seed), peak_gflops) for g in groups]
    step = time_train_step(name, model, batch_size, steps, repeats, warmup, seed)
    rest = rest_parts(parts, step["case"], repeats, seed)
    conv_ms = sum(r["step_ms"] for r in rows)
    for r in rows:
        r["step_share"] = r["step_ms"] / step["ms"]
    rest_ms = step["ms"] - conv_ms
    return {
        "conv_impl": sorted({g.shape.impl for g in groups}),
        "layers": rows,
        "convs": sum(r["count"] for r in rows),
        "conv_ms": conv_ms,
        "conv_share": conv_ms / step["ms"],
        "step_ms": step["ms"],
        "step_warmup_s": step["warmup_s"],
        "recipe": {"optimizer": step["case"].config.optimizer,
                   "augment": bool(step["case"].config.augment)},
        "rest_ms": rest_ms,
        "rest_share": rest_ms / step["ms"],
        "rest_label": REST_LABEL,
        "rest_parts": rest,
        "unaccounted_ms": rest_ms - sum(p["ms"] for p in rest.values()),
    }


@reuse_freed_memory()  # as jaxcnn.train.fit runs its steps
def bench_layers(models: tuple[str, ...] = LAYER_MODELS, conv_impl: str = "auto",
                 batch_size: int = 128, repeats: int = 5, steps: int = 10, warmup: int = 2,
                 gemm_sizes: tuple[int, ...] = GEMM_SIZES, model_options: dict | None = None,
                 seed: int = 0) -> dict:
    """Measure the ``layers`` tables: the machine (CPU flags, GEMM peak) once, then every model
    (:func:`bench_model`). Returns a JSON-ready dict ``{"meta", "peak", "models"}``."""
    import jax

    from jaxcnn.models.layers import resolve_conv_impl

    peak = gemm_peak(gemm_sizes, repeats=repeats, seed=seed)
    results = {name: bench_model(name, conv_impl, batch_size, repeats, steps, warmup,
                                 peak["gflops"], model_options, seed)
               for name in dict.fromkeys(models)}
    return {
        "meta": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(),
            "cpu": cpu_info(),
            "conv_impl": conv_impl,
            "conv_impl_resolved": resolve_conv_impl(conv_impl),
            "batch_size": batch_size,
            "dtype": "float32",
            "repeats": repeats,
            "steps": steps,
            "warmup": warmup,
            "flops": "2*N*Ho*Wo*kh*kw*Cin*Cout for each of fwd, dx, dk",
        },
        "peak": peak,
        "models": results,
    }


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

LAYER_COLUMNS = (
    ("layer", 20), ("in", 9), ("out", 9), ("k/s", 5), ("n", 2), ("GFLOP", 6),
    ("fwd ms", 7), ("GF/s", 5), ("%pk", 4),
    ("dx ms", 7), ("GF/s", 5), ("%pk", 4),
    ("dk ms", 7), ("GF/s", 5), ("%pk", 4),
    ("ms x n", 7), ("step%", 6),
)


def _hwc(v: list[int]) -> str:
    return "x".join(str(d) for d in v)


def _layer_cells(row: dict) -> list[str]:
    name = row["names"][0] + ("*" if row["reads_data"] else "")
    cells = [name[-20:], _hwc(row["in"]), _hwc(row["out"]),
             f"{_hwc(row['kernel'])}/{row['stride'][0]}", str(row["count"]),
             f"{row['gflop']:.3f}"]
    for d in DIRECTIONS:
        cells += [f"{row['ms'][d]:.2f}", f"{row['gflops_per_s'][d]:.0f}",
                  f"{row['pct_peak'][d]:.0f}"]
    return cells + [f"{row['step_ms']:.2f}", f"{100 * row['step_share']:.1f}%"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _part_lines(m: dict, width: int) -> list[str]:
    step = m["step_ms"]
    lines = []
    for kind, p in m["rest_parts"].items():
        label = PART_LABELS.get(kind, kind)
        if "shapes" in p:
            label += f" ({_plural(p['count'], 'layer')}, {_plural(len(p['shapes']), 'shape')})"
        lines.append(f"  {label:<{width - 2}}{p['ms']:>9.2f}{100 * p['ms'] / step:>8.1f}%")
    u = m["unaccounted_ms"]
    lines.append(f"  {'unaccounted (loss, residual adds, fusion, overlap)':<{width - 2}}"
                 f"{u:>9.2f}{100 * u / step:>8.1f}%")
    return lines


def format_model(name: str, m: dict) -> str:
    """One model's table: a row per conv shape, then step, convs, rest and its parts."""
    rec = m["recipe"]
    head = (f"{name}: {_plural(m['convs'], 'conv')}, {len(m['layers'])} distinct (conv_impl "
            f"{', '.join(m['conv_impl']) or '-'}); train step = {rec['optimizer']} recipe"
            f"{' with augmentation' if rec['augment'] else ''}")
    table = _cli.format_table(LAYER_COLUMNS, [_layer_cells(r) for r in m["layers"]])
    w = 58
    lines = [head, table, "",
             f"{'train step (ms, % of step)':<{w}}{m['step_ms']:>9.2f}{100.0:>8.1f}%",
             f"{'all convs (fwd+dx+dk x n)':<{w}}{m['conv_ms']:>9.2f}"
             f"{100 * m['conv_share']:>8.1f}%",
             f"{'rest of step = step - convs':<{w}}{m['rest_ms']:>9.2f}"
             f"{100 * m['rest_share']:>8.1f}%",
             f"  ({m['rest_label']}); timed alone:",
             *_part_lines(m, w)]
    if any(r["reads_data"] for r in m["layers"]):
        lines.append("* reads the data: the step computes no input gradient for it (its dx is "
                     "not in ms x n)")
    return "\n".join(lines)


def format_layers(r: dict) -> str:
    """The ``layers`` result as plain text: header (machine, peak, protocol), then one table
    per model."""
    meta, peak, cpu = r["meta"], r["peak"], r["meta"]["cpu"]
    flags = ", ".join(f"{f} {'?' if v is None else ('yes' if v else 'no')}"
                      for f, v in cpu["flags"].items())
    sizes = ", ".join(f"{n}: {g:.1f}" for n, g in peak["by_size"].items())
    impl = meta["conv_impl_resolved"]
    if meta["conv_impl"] != impl:
        impl += f" (--conv-impl {meta['conv_impl']})"
    lines = [
        f"jax {meta['jax']}, backend {meta['backend']} ({meta['device']}, {meta['devices']} "
        f"device(s)); CPU {cpu['model']}, {cpu['cores']} cores; {flags}",
        f"peak: {peak['gflops']:.1f} GFLOP/s = best float32 jnp.dot GEMM (n x n, GFLOP/s: "
        f"{sizes})",
        f"conv impl {impl}; batch {meta['batch_size']}, {meta['dtype']}; convs: median of "
        f"{meta['repeats']} interleaved calls; step: median of {meta['repeats']} windows of "
        f"{meta['steps']} steps",
        "FLOPs of fwd (forward), dx (input gradient) and dk (kernel gradient) alike: "
        "2*N*Ho*Wo*kh*kw*Cin*Cout; %pk = GFLOP/s / peak",
    ]
    for name, m in r["models"].items():
        lines += ["", format_model(name, m)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The subcommand
# --------------------------------------------------------------------------------------------


def _cmd_layers(args: argparse.Namespace) -> int:
    bench = _bench()
    model_options = bench.model_args(args)
    if any("conv_impl" in opts for opts in model_options.values()):
        raise ValueError("--model-option conv_impl: use --conv-impl instead")
    bench._check_global_options(list(args.models), model_options)
    model_options.setdefault("*", {})["conv_impl"] = args.conv_impl
    r = bench_layers(models=args.models, conv_impl=args.conv_impl, batch_size=args.batch_size,
                     repeats=args.repeats, steps=args.steps, warmup=args.warmup,
                     gemm_sizes=args.gemm_sizes, model_options=model_options, seed=args.seed)
    if args.json == "-":
        print(json.dumps(r))
        return 0
    print(format_layers(r))
    if args.json:
        print(f"\nresults: {_cli.write_json(args.json, r)}")
    return 0


def _add_layers(sub) -> None:
    from jaxcnn.models.layers import CONV_IMPLS

    bench = _bench()
    csv = bench._csv
    p = sub.add_parser(
        "layers",
        help="per-conv-layer fwd / input-grad / kernel-grad times, GFLOP/s, %% of peak and "
        "share of the train step",
        description="Show where every millisecond of a train step goes: each distinct conv "
        "shape of each model (found by tracing it) timed as forward, input gradient and kernel "
        "gradient (each jitted alone), with GFLOP/s and % of the float32 GEMM peak; the "
        "whole train step of the model's recipe (as 'bench train' times it) and each shape's "
        "share of it; the rest of the step (BatchNorm, pooling, dropout, dense, optimizer, "
        "augmentation, host input) broken down by timing those parts alone.",
        formatter_class=_cli.HelpFormatter,
    )
    bench.add_model_flags(p, LAYER_MODELS,
                          example="resnet20.shortcut=B for its 1x1 projection convs")
    p.add_argument("--conv-impl", choices=(*CONV_IMPLS, "auto"), default="auto",
                   help="conv implementation of the per-layer timings and of the models' "
                   "train step (auto: onednn where installed, else fast, on CPU; lax on GPU/TPU)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="batch of every layer and of the train step")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed calls per conv direction / part and timed step windows "
                   "(medians reported)")
    p.add_argument("--steps", type=positive_int, default=10, help="train steps per timed window")
    p.add_argument("--warmup", type=positive_int, default=2,
                   help="untimed train steps (compilation included) before the windows")
    p.add_argument("--gemm-sizes", type=csv(positive_int), default=GEMM_SIZES,
                   help="n of the square float32 jnp.dot GEMMs whose best GFLOP/s is the peak")
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and inputs")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the results as one JSON object to PATH ('-': print only "
                   "the JSON, no table)")
    p.set_defaults(func=_cmd_layers)


_bench().register(_add_layers)
