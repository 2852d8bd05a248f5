"""Speed tables: ``python -m experiments.bench <what>``.

Subcommands (add more with :func:`register`):

``ops``
    A cnn-sized layer (batch 128, 32x32x32 -> 32 channels, 3x3 kernel, SAME, float32):
    ``ops.conv`` (XLA's convolution) against ``ops.conv_reference`` (gather the windows,
    multiply-accumulate, hand-written backward), forward and forward+backward (gradient with
    respect to input and kernel), each jitted, warmed up, then the median of ``--repeats``.
    Then a course-style numpy convolution written as four Python loops on a smaller problem
    (batch 2, 16x16x8 -> 8), timed per output element, and the per-element speed-up of
    ``conv_reference`` over it.

``train``
    Train and eval images/s of ``mlp`` and ``cnn3`` at batch 128 and 512 on all devices, through
    the project's real training path: the state and jitted steps that :func:`jaxcnn.train.fit`
    trains with, from the same builder (:func:`jaxcnn.train.build`) and each model's recipe of
    ``experiments.cifar10`` (:mod:`jaxcnn.train.recipes`; cnn3: SGD Nesterov, label smoothing,
    random crop + flip on device; mlp: AdamW, no augmentation) on a ("data",) mesh, host
    batches from ``epoch_batches`` through ``shard_batch``. Data: synthetic
    uint8 32x32x3 images (speed does not depend on pixel values). Protocol: trace+lower+compile
    each step (``compile_s``; the jit cache then holds it), ``--warmup`` steps, then
    ``--repeats`` round-robin rounds; each round runs a window of ``--steps`` train steps and
    one of eval steps for every (model, batch) case, then the input pipeline
    (:func:`jaxcnn.data.pipeline_images_per_s`: shuffled host batches -> device -> augment +
    normalise) once per batch size; medians over rounds, device syncs only at window ends.
    ``pipe/train`` is pipeline images/s over train images/s (bar >= 5x, checked for cnn3).
    ``--model-option key=value`` (or ``model.key=value``) passes options to
    ``jaxcnn.models.create``; ``--xla-flags='...'`` re-runs the benchmark in a subprocess with
    those XLA_FLAGS; ``--dtype bfloat16`` as in ``experiments.cifar10``. ``--json`` prints one
    object keyed by model: the first of ``--batch-sizes`` under the plain name (``"cnn3"``), the
    others as ``"cnn3@512"``; each entry has ``batch_size``, ``train_images_per_s``,
    ``eval_images_per_s``, ``compile_s``, ``peak_rss_mb`` (the bench process's peak resident
    set size, ``VmHWM``: the whole process, every case, not one model) and more. ``resnet20``
    (or any registered model) is benchmarked with ``--models cnn3,resnet20``. With
    ``--baselines`` (and ``--baseline-python``, an environment with TensorFlow/Keras and
    PyTorch, see ``experiments/baselines/README.md``), ``experiments/baselines/keras_baseline.py``
    and ``torch_baseline.py`` then run one at a time, in their own processes, for every
    benchmarked model that has a baseline (cnn3, resnet20), at the first of ``--batch-sizes``,
    same protocol; the table gains, per model and framework, train and eval images/s, peak RSS
    (of each baseline's own process) and the ratios jaxcnn / baseline. JSON:
    ``"baseline:keras-tf"``, ``"baseline:torch"`` for cnn3 (with ``cnn3_ratio``, as before),
    ``"baseline:keras-tf:resnet20"``, ``"baseline:torch:resnet20"`` for resnet20; every entry
    has ``model``, ``train_images_per_s``, ``eval_images_per_s``, ``peak_rss_mb``,
    ``train_ratio`` and ``eval_ratio`` (jaxcnn / baseline), or ``error``.

Bars (from DESIGN.md): conv_reference within 3x of lax conv; >= 1000x faster per output
element than the numpy loops. cnn3 train images/s >= Keras (TF) and PyTorch on the same
machine; input pipeline >= 5x the train step.

Measured results, each with its command and machine (and what was tried to speed up the cnn3
train step on the CPU), are in ``visuals/bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from experiments import _cli
from experiments._cli import positive_int
from jaxcnn.host_malloc import reuse_freed_memory

# --------------------------------------------------------------------------------------------
# The course-style baseline: four Python loops
# --------------------------------------------------------------------------------------------


def _pad_same(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Zero-pad (N, H, W, C) so a stride-1 ``kh x kw`` window keeps H and W (extra on the
    high side when the total padding is odd, as lax does)."""
    ph, pw = kh - 1, kw - 1
    return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def numpy_conv_loops(x: np.ndarray, kernel: np.ndarray, padding: str = "SAME") -> np.ndarray:
    """Stride-1 cross-correlation written the way a first course writes it.

    Four Python loops: output row, output column, output channel, input channel; the body
    multiplies one ``kh x kw`` window by one kernel slice and sums it (vectorised over the batch
    only). ``x: (N, H, W, C_in)``, ``kernel: (kh, kw, C_in, C_out)`` -> ``(N, H', W', C_out)``.
    """
    x = np.asarray(x, dtype=np.float32)
    kernel = np.asarray(kernel, dtype=np.float32)
    kh, kw, c_in, c_out = kernel.shape
    if x.ndim != 4 or x.shape[-1] != c_in:
        raise ValueError(f"x must be (N, H, W, {c_in}), got {x.shape}")
    if padding == "SAME":
        x = _pad_same(x, kh, kw)
    elif padding != "VALID":
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    n, h, w, _ = x.shape
    h_out, w_out = h - kh + 1, w - kw + 1
    out = np.zeros((n, h_out, w_out, c_out), dtype=np.float32)
    for i in range(h_out):
        for j in range(w_out):
            for co in range(c_out):
                acc = np.zeros(n, dtype=np.float32)
                for ci in range(c_in):
                    window = x[:, i:i + kh, j:j + kw, ci]
                    acc += np.sum(window * kernel[:, :, ci, co], axis=(1, 2))
                out[:, i, j, co] = acc
    return out


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def time_jitted(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in milliseconds of ``fn(*args)`` (already jitted), outputs blocked on.
    The first ``warmup`` calls (compilation included) are not counted."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_interleaved(fns: dict, args: tuple, repeats: int = 5,
                     extra: tuple[str, Callable, int] | None = None) -> dict:
    """Median ms of each jitted ``fns[name](*args)``, timed round-robin (one call of each per
    round) so that load from other processes hits every variant alike and the ratios stay
    fair on a shared machine. Each function is warmed up (compiled) first. ``extra`` =
    ``(name, no-arg Python callable, rounds)`` is timed in the first ``rounds`` rounds too.
    """
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    n_extra = 0
    if extra is not None:
        samples[extra[0]] = []
        n_extra = extra[2]
    for r in range(max(repeats, n_extra)):
        if r < repeats:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                samples[name].append(time.perf_counter() - t0)
        if r < n_extra:
            t0 = time.perf_counter()
            extra[1]()
            samples[extra[0]].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(v) for name, v in samples.items()}


def time_python(fn: Callable, *args, repeats: int = 3) -> float:
    """Median wall time in milliseconds of a plain Python/numpy call."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# --------------------------------------------------------------------------------------------
# bench ops
# --------------------------------------------------------------------------------------------


def bench_ops(batch: int = 128, size: int = 32, c_in: int = 32, c_out: int = 32, k: int = 3,
              repeats: int = 5, loop_batch: int = 2, loop_size: int = 16, loop_c: int = 8,
              loop_repeats: int = 1, seed: int = 0) -> dict:
    """Measure the ``ops`` table; returns a JSON-ready dict (times in ms)."""
    import jax
    import jax.numpy as jnp

    from jaxcnn import ops

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, size, c_in), dtype=np.float32))
    scale = 1.0 / (k * np.sqrt(c_in))
    w = jnp.asarray(rng.standard_normal((k, k, c_in, c_out), dtype=np.float32) * scale)
    cot = jnp.asarray(rng.standard_normal((batch, size, size, c_out), dtype=np.float32))

    def fwd(conv_fn):
        return jax.jit(lambda x, w: conv_fn(x, w, padding="SAME"))

    def fwd_bwd(conv_fn):
        def loss(x, w):
            return jnp.sum(conv_fn(x, w, padding="SAME") * cot)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    fns = {
        "lax conv forward": fwd(ops.conv),
        "conv_reference forward": fwd(ops.conv_reference),
        "lax conv fwd+bwd": fwd_bwd(ops.conv),
        "conv_reference fwd+bwd": fwd_bwd(ops.conv_reference),
    }
    xs = rng.standard_normal((loop_batch, loop_size, loop_size, loop_c), dtype=np.float32)
    ws = rng.standard_normal((k, k, loop_c, loop_c), dtype=np.float32)
    times = time_interleaved(fns, (x, w), repeats=repeats,
                             extra=("numpy loops", lambda: numpy_conv_loops(xs, ws, "SAME"),
                                    loop_repeats))
    loop_ms = times.pop("numpy loops")
    rows = times
    n_out = batch * size * size * c_out

    # The numpy baseline runs on a smaller problem: compare per output element.
    n_loop_out = loop_batch * loop_size * loop_size * loop_c
    ref_ns = 1e6 * rows["conv_reference forward"] / n_out
    loop_ns = 1e6 * loop_ms / n_loop_out
    ratio_fwd = rows["conv_reference forward"] / rows["lax conv forward"]
    ratio_bwd = rows["conv_reference fwd+bwd"] / rows["lax conv fwd+bwd"]
    speedup = loop_ns / ref_ns
    return {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "layer": {"batch": batch, "hw": size, "c_in": c_in, "c_out": c_out, "kernel": k,
                  "padding": "SAME", "dtype": "float32"},
        "repeats": repeats,
        "ms": rows,
        "ratio_vs_lax": {
            "lax conv forward": 1.0,
            "conv_reference forward": ratio_fwd,
            "lax conv fwd+bwd": 1.0,
            "conv_reference fwd+bwd": ratio_bwd,
        },
        "numpy_loops": {
            "problem": {"batch": loop_batch, "hw": loop_size, "c_in": loop_c, "c_out": loop_c,
                        "kernel": k, "padding": "SAME"},
            "ms": loop_ms,
            "ns_per_output": loop_ns,
        },
        "conv_reference_ns_per_output": ref_ns,
        "speedup_per_output_vs_numpy_loops": speedup,
        "bars": {
            "conv_reference within 3x of lax (forward)": bool(ratio_fwd <= 3.0),
            "conv_reference within 3x of lax (fwd+bwd)": bool(ratio_bwd <= 3.0),
            ">= 1000x faster per output element than numpy loops": bool(speedup >= 1000.0),
        },
    }


def format_ops(r: dict) -> str:
    """The ``ops`` result as a plain-text table."""
    lay = r["layer"]
    lines = [
        f"layer: batch {lay['batch']}, {lay['hw']}x{lay['hw']}x{lay['c_in']} -> {lay['c_out']}, "
        f"{lay['kernel']}x{lay['kernel']} {lay['padding']}, {lay['dtype']}",
        f"backend {r['backend']} ({r['device']}); median of {r['repeats']} interleaved runs "
        "after warm-up",
        "",
        f"{'what':<28}{'ms':>10}{'x lax':>9}",
        "-" * 47,
    ]
    for name, ms in r["ms"].items():
        lines.append(f"{name:<28}{ms:>10.2f}{r['ratio_vs_lax'][name]:>9.2f}")
    nl = r["numpy_loops"]
    p = nl["problem"]
    lines += [
        "",
        f"numpy four loops (batch {p['batch']}, {p['hw']}x{p['hw']}x{p['c_in']} -> {p['c_out']}):"
        f" {nl['ms']:.1f} ms = {nl['ns_per_output']:,.0f} ns per output element",
        f"conv_reference forward: {r['conv_reference_ns_per_output']:,.2f} ns per output element"
        f" -> {r['speedup_per_output_vs_numpy_loops']:,.0f}x faster",
        "",
        "bars:",
    ]
    for name, ok in r["bars"].items():
        lines.append(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return "\n".join(lines)


def _cmd_ops(args: argparse.Namespace) -> int:
    r = bench_ops(batch=args.batch, repeats=args.repeats, loop_repeats=args.loop_repeats,
                  seed=args.seed)
    print(json.dumps(r) if args.json else format_ops(r))
    return 0


def _add_ops(sub) -> None:
    p = sub.add_parser(
        "ops",
        help="conv_reference vs lax conv vs numpy loops on one cnn-sized layer",
        description="Time ops.conv and ops.conv_reference (forward; forward+backward w.r.t. "
        "input and kernel) on a batch of 32x32x32 feature maps with a 3x3, 32-channel SAME "
        "kernel, and a four-loop numpy convolution per output element.",
        formatter_class=_cli.HelpFormatter,
    )
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed calls per jitted function (median reported), after one warm-up")
    p.add_argument("--batch", type=positive_int, default=128, help="batch size of the layer")
    p.add_argument("--loop-repeats", type=positive_int, default=3,
                   help="timed calls of the (slow) numpy loop baseline")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    p.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    p.set_defaults(func=_cmd_ops)


SUBCOMMANDS: list[Callable] = [_add_ops]


def register(add_fn: Callable) -> Callable:
    """Register ``add_fn(subparsers)`` that adds one more subcommand (sets ``func``)."""
    SUBCOMMANDS.append(add_fn)
    return add_fn


# --------------------------------------------------------------------------------------------
# bench train
# --------------------------------------------------------------------------------------------

TRAIN_MODELS = ("mlp", "cnn3")
TRAIN_BATCH_SIZES = (128, 512)
PIPELINE_BAR = 5.0  # DESIGN.md: the input pipeline delivers >= 5x what the train step consumes
_REEXEC_ENV = "JAXCNN_BENCH_XLA_REEXEC"
BASELINES_DIR = Path(__file__).resolve().parent / "baselines"
BASELINE_SCRIPTS = {"keras-tf": "keras_baseline.py", "torch": "torch_baseline.py"}
BASELINE_MODELS = ("cnn3", "resnet20")  # the scripts' --model choices
RSS_SCOPE = "the whole bench process (every model and batch size, the input pipeline)"


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (``VmHWM``), measured the way the
    baseline scripts measure theirs: ``experiments/baselines/peak_rss.py``, loaded by path
    (the baselines folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_baseline_peak_rss",
                                                  BASELINES_DIR / "peak_rss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_rss_mb()


def parse_model_options(items: list[str] | None) -> dict[str, dict]:
    """``["conv_impl=fast", "cnn3.dtype=bfloat16"]`` -> ``{"*": {"conv_impl": "fast"},
    "cnn3": {"dtype": "bfloat16"}}``.

    ``key=value`` applies to every benchmarked model that accepts ``key``; ``model.key=value``
    to that model only. Values are Python literals when they parse as one (``3``, ``0.5``,
    ``True``, ``(32, 64)``), else strings; ``dtype``/``param_dtype`` become numpy dtypes.
    """
    import ast

    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model-option must be key=value or model.key=value, got {item!r}")
        scope, _, key = key.rpartition(".")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out.setdefault(scope or "*", {})[key] = value
    return out


def add_model_flags(p: argparse.ArgumentParser, default_models: tuple[str, ...],
                    example: str) -> None:
    """``--models`` (comma-separated, default ``default_models``) and ``--model-option``
    (:func:`parse_model_options`; ``example``: one in the help) of a subcommand that benchmarks
    registered models; read them back with :func:`model_args`."""
    p.add_argument("--models", type=_csv(str), default=default_models,
                   help="comma-separated model names (jaxcnn.models.available())")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option for jaxcnn.models.create, repeatable: key=value goes to every "
                   "model that accepts key, model.key=value to one model (e.g. "
                   f"{example}); values are Python literals or strings")


def model_args(args: argparse.Namespace) -> dict[str, dict]:
    """The parsed ``--model-option``s of ``args`` (:func:`add_model_flags`), after checking that
    every name in ``--models`` is a registered model (ValueError otherwise)."""
    from jaxcnn.models import available

    unknown = [m for m in args.models if m not in available()]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {unknown}; available: "
                         f"{', '.join(available())}")
    return parse_model_options(args.model_option)


def options_for(name: str, model_options: dict[str, dict]) -> dict:
    """The ``jaxcnn.models.create`` options of model ``name`` (see :func:`parse_model_options`):
    global options the model accepts, then its own. Dtype names become ``jnp`` dtypes."""
    import jax.numpy as jnp

    from jaxcnn.models import supported_options

    opts = supported_options(name, model_options.get("*", {}))
    opts.update(model_options.get(name, {}))
    for k in ("dtype", "param_dtype"):
        if isinstance(opts.get(k), str):
            opts[k] = jnp.dtype(opts[k])
    return opts


def _check_global_options(models: list[str], model_options: dict[str, dict]) -> None:
    from jaxcnn.models import supported_options

    for key, value in model_options.get("*", {}).items():
        if not any(supported_options(m, {key: value}) for m in models):
            raise ValueError(f"--model-option {key}: none of the models {models} accepts it")


def synthetic_cifar(n: int, seed: int = 0):
    """``n`` random uint8 CIFAR-shaped images (32x32x3) and labels in [0, 10), as an
    ``ArrayDataset``: speed does not depend on the pixel values."""
    from jaxcnn.data import ArrayDataset

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.int32)
    return ArrayDataset(images, labels, tuple(f"class{i}" for i in range(10)))


class _TrainCase:
    """One (model, batch size): the state and jitted steps that ``jaxcnn.train.fit`` trains
    with (:func:`jaxcnn.train.build`, the model's recipe of ``experiments.cifar10``), and an
    endless batch source."""

    def __init__(self, name: str, batch_size: int, dataset, mesh, model, dtype: str,
                 seed: int):
        import jax

        from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
        from jaxcnn.train import build, recipes

        self.name, self.batch_size, self.dataset, self.mesh = name, batch_size, dataset, mesh
        self.seed, self.model = seed, model
        self.config = recipes.with_overrides(
            recipes.for_model(name), {"batch_size": batch_size, "dtype": dtype, "seed": seed})
        engine = build(model, self.config, dataset, normalization=(CIFAR10_MEAN, CIFAR10_STD),
                       mesh=mesh)
        self.state, self.train_step, self.eval_step = (engine.state, engine.train_step,
                                                       engine.eval_step)
        self.params = int(sum(np.size(p) for p in jax.tree.leaves(engine.state.params)))
        self._batches = self._endless()
        self.ones = np.ones(batch_size // jax.process_count(), np.float32)

    def _endless(self):
        from jaxcnn.data import epoch_batches

        epoch = 0
        while True:
            yield from epoch_batches(self.dataset, self.batch_size, seed=self.seed, epoch=epoch)
            epoch += 1

    def compile(self) -> tuple[float, float]:
        """Seconds to trace, lower and compile the train step and the eval step (the jit cache
        then holds the programs, so the first timed call does not compile again)."""
        from jaxcnn.train import shard_batch

        images, labels = next(self._batches)
        x, y, mask = shard_batch(self.mesh, images, labels, self.ones)
        t0 = time.perf_counter()
        self.train_step.lower(self.state, x, y).compile()
        t1 = time.perf_counter()
        self.eval_step.lower(self.state, x, y, mask).compile()
        return t1 - t0, time.perf_counter() - t1

    def train_window(self, steps: int) -> float:
        """Seconds for ``steps`` train steps as ``fit`` runs them (host batch, shard, step),
        waiting for the device only at the end."""
        import jax

        from jaxcnn.train import shard_batch

        t0 = time.perf_counter()
        for _ in range(steps):
            images, labels = next(self._batches)
            self.state, metrics = self.train_step(self.state,
                                                  *shard_batch(self.mesh, images, labels))
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0

    def eval_window(self, steps: int) -> float:
        """Seconds for ``steps`` eval steps (full batches, mask of ones)."""
        import jax

        from jaxcnn.train import shard_batch

        t0 = time.perf_counter()
        outs = []
        for _ in range(steps):
            images, labels = next(self._batches)
            outs.append(self.eval_step(self.state,
                                       *shard_batch(self.mesh, images, labels, self.ones)))
        jax.block_until_ready(outs)
        return time.perf_counter() - t0


@reuse_freed_memory()  # as jaxcnn.train.fit runs its steps
def bench_train(models: tuple[str, ...] = TRAIN_MODELS,
                batch_sizes: tuple[int, ...] = TRAIN_BATCH_SIZES, steps: int = 20,
                repeats: int = 3, warmup: int = 2, model_options: dict | None = None,
                dtype: str = "float32", dataset_size: int = 10_000,
                pipeline_batches: int = 50, seed: int = 0) -> dict:
    """Measure the ``train`` table; returns a JSON-ready dict.

    Every (model, batch size) case is built and compiled first (compile time = trace + lower +
    compile of the train step; the eval step's separately), warmed up with ``warmup`` train and
    eval steps, then timed round-robin: each of ``repeats`` rounds runs, for every case in turn, a
    window of ``steps`` train steps and a window of ``steps`` eval steps, and then the input
    pipeline (:func:`jaxcnn.data.pipeline_images_per_s`, ``pipeline_batches`` batches) once per
    batch size. Rates are medians over the rounds; device syncs only at window ends.
    """
    import jax

    from jaxcnn.data import pipeline_images_per_s
    from jaxcnn.models import create
    from jaxcnn.train import make_mesh

    model_options = model_options or {}
    models, batch_sizes = tuple(dict.fromkeys(models)), tuple(dict.fromkeys(batch_sizes))
    _check_global_options(list(models), model_options)
    mesh = make_mesh()
    dataset = synthetic_cifar(max(dataset_size, max(batch_sizes)), seed=seed)
    cases = []
    for name in models:
        opts = options_for(name, model_options)
        if dtype != "float32":
            opts["dtype"] = jax.numpy.dtype(dtype)
        model = create(name, num_classes=dataset.num_classes, **opts)
        for bs in batch_sizes:
            case = _TrainCase(name, bs, dataset, mesh, model, dtype, seed)
            case.options = {k: (jax.numpy.dtype(v).name if k.endswith("dtype") else v)
                            for k, v in opts.items()}
            case.compile_s, case.eval_compile_s = case.compile()
            case.train_times, case.eval_times = [], []
            cases.append(case)
    for case in cases:
        case.train_window(warmup)
        case.eval_window(warmup)
    pipe: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
    for _ in range(repeats):
        for case in cases:
            case.train_times.append(case.train_window(steps))
            case.eval_times.append(case.eval_window(steps))
        for bs in batch_sizes:
            pipe[bs].append(pipeline_images_per_s(dataset, batch_size=bs,
                                                  n_batches=pipeline_batches, seed=seed))
    pipeline = {bs: statistics.median(v) for bs, v in pipe.items()}
    rss = peak_rss_mb()

    rows: dict[str, dict] = {}
    for case in cases:
        bs = case.batch_size
        key = case.name if bs == batch_sizes[0] else f"{case.name}@{bs}"
        train_ips = [steps * bs / t for t in case.train_times]
        eval_ips = [steps * bs / t for t in case.eval_times]
        train_rate = statistics.median(train_ips)
        rows[key] = {
            "model": case.name,
            "batch_size": bs,
            "train_images_per_s": train_rate,
            "eval_images_per_s": statistics.median(eval_ips),
            "compile_s": case.compile_s,
            "eval_compile_s": case.eval_compile_s,
            "train_step_ms": 1e3 * statistics.median(case.train_times) / steps,
            "pipeline_images_per_s": pipeline[bs],
            "pipeline_ratio": pipeline[bs] / train_rate,
            "train_images_per_s_windows": train_ips,
            "params": case.params,
            "augment": bool(case.config.augment),
            "model_options": case.options,
            "peak_rss_mb": rss,
            "peak_rss_of": RSS_SCOPE,
        }
    return {
        "rows": rows,
        "meta": {
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(),
            "dtype": dtype,
            "steps": steps,
            "repeats": repeats,
            "warmup": warmup,
            "pipeline_batches": pipeline_batches,
            "data": f"synthetic uint8 {dataset.images.shape}",
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_rss_mb": rss,
        },
    }


def run_baseline(framework: str, python: str, model: str = "cnn3", batch_size: int = 128,
                 steps: int = 20, repeats: int = 3, augment: bool = False,
                 timeout: float = 3600.0) -> dict:
    """Run ``experiments/baselines/<framework script> --model <model>`` with ``python`` (its own
    environment) and return its JSON line as a dict, or ``{"framework", "model", "error"}`` when
    it fails."""
    import subprocess

    script = BASELINES_DIR / BASELINE_SCRIPTS[framework]
    cmd = [python, str(script), "--model", model, "--batch-size", str(batch_size),
           "--steps", str(steps), "--repeats", str(repeats)] + (["--augment"] if augment else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"framework": framework, "model": model,
                "error": f"{type(err).__name__}: {err}"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if proc.returncode == 0 and "train_images_per_s" in result:
                result.setdefault("model", model)
                return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"framework": framework, "model": model,
            "error": f"exit {proc.returncode}: {' | '.join(tail) or 'no output'}"}


def add_baselines(r: dict, python: str, steps: int, repeats: int, augment: bool = False,
                  frameworks: tuple[str, ...] = tuple(BASELINE_SCRIPTS),
                  models: tuple[str, ...] | None = None) -> dict:
    """Run the baselines one at a time (after the JAX measurements) for every model of
    ``r["rows"]`` that has one (or ``models``), each at the batch size of that model's plain-key
    row (the first of ``--batch-sizes``), and store them as ``r["baselines"][model][framework]``
    with ``train_ratio`` / ``eval_ratio`` = jaxcnn's images/s over the baseline's (cnn3 entries
    also ``cnn3_ratio`` = ``train_ratio``, the key of older results)."""
    rows = r["rows"]
    if models is None:
        models = tuple(m for m in dict.fromkeys(row["model"] for row in rows.values())
                       if m in BASELINE_MODELS)
    out: dict[str, dict] = {}
    for model in models:
        ours = rows.get(model) or next((row for row in rows.values() if row["model"] == model),
                                       None)
        batch_size = ours["batch_size"] if ours else 128
        out[model] = {}
        for fw in frameworks:
            b = run_baseline(fw, python, model=model, batch_size=batch_size, steps=steps,
                             repeats=repeats, augment=augment)
            if ours is not None and "train_images_per_s" in b:
                b["train_ratio"] = ours["train_images_per_s"] / b["train_images_per_s"]
                if b.get("eval_images_per_s"):
                    b["eval_ratio"] = ours["eval_images_per_s"] / b["eval_images_per_s"]
                if model == "cnn3":
                    b["cnn3_ratio"] = b["train_ratio"]
            out[model][fw] = b
    r["baselines"] = out
    return r


def baseline_key(model: str, framework: str) -> str:
    """The ``--json`` key of a baseline: ``"baseline:torch"`` for cnn3 (as before resnet20 had
    baselines), ``"baseline:torch:resnet20"`` for other models."""
    return f"baseline:{framework}" if model == "cnn3" else f"baseline:{framework}:{model}"


def train_json(r: dict) -> dict:
    """The ``--json`` object: the rows keyed by model (``"cnn3"`` for the first batch size,
    ``"cnn3@512"`` for others), plus the baselines when run (:func:`baseline_key`)."""
    out = dict(r["rows"])
    for model, by_fw in r.get("baselines", {}).items():
        for fw, b in by_fw.items():
            out[baseline_key(model, fw)] = b
    return out


def _num(value, fmt: str, width: int) -> str:
    return f"{value:>{width}{fmt}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def format_baselines(r: dict) -> list[str]:
    """Lines of the comparison table: per model, jaxcnn's row (at the baselines' batch size)
    and each baseline's train/eval images/s, peak RSS and the ratios jaxcnn / baseline."""
    baselines = r.get("baselines") or {}
    if not baselines:
        return []
    batch = sorted({b.get("batch_size") for by_fw in baselines.values()
                    for b in by_fw.values() if b.get("batch_size")})
    lines = ["", f"vs baselines, batch {', '.join(map(str, batch)) or '?'} (each in its own "
                 "process; jaxcnn/it: jaxcnn's images/s over the baseline's)",
             f"{'model':<10}{'framework':<14}{'train img/s':>13}{'eval img/s':>12}"
             f"{'peak RSS MB':>13}{'jaxcnn/it train':>17}{'eval':>7}",
             "-" * 86]
    for model, by_fw in baselines.items():
        ours = r["rows"].get(model) or next(
            (row for row in r["rows"].values() if row["model"] == model), None)
        if ours is not None:
            rss = ours.get("peak_rss_mb")
            rss_text = f"{rss:>12,.0f}*" if isinstance(rss, (int, float)) else f"{'-':>13}"
            lines.append(f"{model:<10}{'jaxcnn':<14}{ours['train_images_per_s']:>13,.0f}"
                         f"{ours['eval_images_per_s']:>12,.0f}{rss_text}")
        for fw, b in by_fw.items():
            label = fw + (" +aug" if b.get("augment") else "")
            if "error" in b:
                lines.append(f"{model:<10}{label:<14}  failed: {b['error']}")
                continue
            lines.append(f"{model:<10}{label:<14}{b['train_images_per_s']:>13,.0f}"
                         f"{_num(b.get('eval_images_per_s'), ',.0f', 12)}"
                         f"{_num(b.get('peak_rss_mb'), ',.0f', 13)}"
                         f"{_num(b.get('train_ratio'), '.2f', 17)}"
                         f"{_num(b.get('eval_ratio'), '.2f', 7)}")
            if b.get("note"):
                lines.append(f"  ({b['note']})")
            if ours is not None and b.get("params") not in (None, ours["params"]):
                lines.append(f"  (not the same model: {b['params']:,} parameters, jaxcnn "
                             f"{ours['params']:,})")
    lines.append("* jaxcnn: the peak RSS of the whole bench process, not of one model")
    return lines


def format_train(r: dict) -> str:
    """The ``train`` result as a plain-text table."""
    m = r["meta"]
    lines = [
        f"backend {m['backend']} ({m['device']}, {m['devices']} device(s)); {m['dtype']}; "
        f"{m['data']}",
        f"median of {m['repeats']} interleaved windows of {m['steps']} steps after compile and "
        f"{m['warmup']} warm-up steps" + (f"; XLA_FLAGS={m['xla_flags']}" if m["xla_flags"]
                                         else ""),
        "",
        f"{'model':<10}{'batch':>6}{'train img/s':>13}{'eval img/s':>12}{'step ms':>9}"
        f"{'compile s':>11}{'pipe img/s':>12}{'pipe/train':>11}",
        "-" * 84,
    ]
    for row in r["rows"].values():
        lines.append(
            f"{row['model']:<10}{row['batch_size']:>6}{row['train_images_per_s']:>13,.0f}"
            f"{row['eval_images_per_s']:>12,.0f}{row['train_step_ms']:>9.1f}"
            f"{row['compile_s']:>11.1f}{row['pipeline_images_per_s']:>12,.0f}"
            f"{row['pipeline_ratio']:>10.1f}x")
    if m.get("peak_rss_mb") is not None:
        lines.append(f"peak RSS {m['peak_rss_mb']:,.0f} MB: {RSS_SCOPE}")
    opts = {row["model"]: row["model_options"] for row in r["rows"].values()
            if row["model_options"]}
    if opts:
        lines.append(f"model options: {opts}")
    baselines = r.get("baselines") or {}
    lines += format_baselines(r)
    bars: list[str] = []
    for row in r["rows"].values():
        if row["model"] == "cnn3":
            ok = row["pipeline_ratio"] >= PIPELINE_BAR
            bars.append(f"  [{'PASS' if ok else 'FAIL'}] input pipeline >= {PIPELINE_BAR:g}x the "
                        f"cnn3 train step (batch {row['batch_size']}): "
                        f"{row['pipeline_ratio']:.1f}x")
    for fw, b in baselines.get("cnn3", {}).items():
        if "cnn3_ratio" in b:
            ok = b["cnn3_ratio"] >= 1.0
            bars.append(f"  [{'PASS' if ok else 'FAIL'}] cnn3 train >= {fw} "
                        f"({b['cnn3_ratio']:.2f}x)")
    if bars:
        lines += ["", "bars (cnn3):", *bars]
    return "\n".join(lines)


def _strip_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _reexec_with_xla_flags(args: argparse.Namespace) -> int:
    """Run this subcommand again in a fresh Python with ``XLA_FLAGS`` extended by
    ``--xla-flags`` (XLA reads them once, when jax starts). Its stdout is printed here."""
    import subprocess

    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), args.xla_flags) if f)
    env[_REEXEC_ENV] = "1"
    argv = _strip_option(list(args.argv), "--xla-flags")
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", *argv], env=env,
                          stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode:
        print(f"error: the benchmark run with XLA_FLAGS={env['XLA_FLAGS']!r} failed (exit "
              f"{proc.returncode}); see its messages above", file=sys.stderr)
        return 1
    return 0


def _csv(kind: Callable) -> Callable:
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return tuple(kind(s) for s in items)

    return parse


def _cmd_train(args: argparse.Namespace) -> int:
    if args.xla_flags and not os.environ.get(_REEXEC_ENV):
        return _reexec_with_xla_flags(args)
    model_options = model_args(args)
    r = bench_train(models=args.models, batch_sizes=args.batch_sizes, steps=args.steps,
                    repeats=args.repeats, warmup=args.warmup, model_options=model_options,
                    dtype=args.dtype, dataset_size=args.dataset_size,
                    pipeline_batches=args.pipeline_batches, seed=args.seed)
    if args.baselines:
        if not args.json:
            print(format_train(r), flush=True)
            print("\nrunning baselines (one at a time)...", flush=True)
        add_baselines(r, args.baseline_python, steps=args.baseline_steps,
                      repeats=args.repeats, augment=args.baseline_augment)
        if not r["baselines"]:
            print(f"--baselines: none of the models {list(args.models)} has a baseline (only "
                  f"{', '.join(BASELINE_MODELS)})", file=sys.stderr)
    if args.json:
        print(json.dumps(train_json(r)))
    else:
        if args.baselines:
            print()
        print(format_train(r))
    return 0


@register
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train/eval images/s of mlp and cnn3 (or --models), compile time, input "
        "pipeline, peak RSS, baselines",
        description="Time the project's real training path (the state and jitted steps of "
        "jaxcnn.train.build, which fit trains with, for each model's recipe from "
        "jaxcnn.train.recipes -- cnn3 with crop+flip augmentation, mlp without -- on a mesh of "
        "all devices, batches from epoch_batches through shard_batch, as fit does) on "
        "synthetic uint8 32x32x3 data. "
        "Protocol: compile, warm up, then the median of --repeats round-robin windows of "
        "--steps steps, waiting for the device only at the window ends. Also the input "
        "pipeline's images/s (jaxcnn.data.pipeline_images_per_s) and its ratio to the train "
        "step (bar: >= 5x), and the peak RSS of the bench process. --json prints one object "
        "keyed by model: the first batch size as 'cnn3', others as 'cnn3@512'; baselines as "
        "'baseline:keras-tf', 'baseline:torch' (cnn3) and 'baseline:keras-tf:resnet20', "
        "'baseline:torch:resnet20'.",
        formatter_class=_cli.HelpFormatter,
    )
    add_model_flags(p, TRAIN_MODELS, example="cnn3.conv_impl=fast")
    p.add_argument("--batch-sizes", type=_csv(positive_int), default=TRAIN_BATCH_SIZES,
                   help="comma-separated global batch sizes; the first is the plain JSON key")
    p.add_argument("--steps", type=positive_int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed windows per case (median reported)")
    p.add_argument("--warmup", type=positive_int, default=2,
                   help="untimed train and eval steps per case after compilation")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype: sets the models' dtype option and the preprocessed "
                   "input dtype, as experiments.cifar10 --dtype does")
    p.add_argument("--xla-flags", default=None,
                   help="extra XLA_FLAGS (default: none), given with '=' since they start with "
                   "dashes: "
                   "--xla-flags='--xla_cpu_enable_fast_math=true'; the benchmark re-runs "
                   "itself in a subprocess with them added to XLA_FLAGS, since XLA reads its "
                   "flags when jax starts")
    p.add_argument("--dataset-size", type=positive_int, default=10_000,
                   help="synthetic images held in memory (batches are drawn from them)")
    p.add_argument("--pipeline-batches", type=positive_int, default=50,
                   help="timed batches per input-pipeline measurement")
    p.add_argument("--baselines", action="store_true",
                   help="after the JAX measurements, run experiments/baselines/"
                   "keras_baseline.py and torch_baseline.py with --baseline-python, one at a "
                   "time, for every benchmarked model that has one (cnn3, resnet20), at the "
                   "first of --batch-sizes: train and eval images/s, peak RSS, ratios")
    p.add_argument("--baseline-python", default="/root/venv-baselines/bin/python",
                   help="Python of the environment that has tensorflow/keras and torch (see "
                   "experiments/baselines/README.md)")
    p.add_argument("--baseline-steps", type=positive_int, default=20,
                   help="steps per timed window of the baselines (median of --repeats)")
    p.add_argument("--baseline-augment", action="store_true",
                   help="baselines also augment (flip + pad-and-crop); off by default, while "
                   "jaxcnn's cnn3 and resnet20 always train with their recipe's augmentation")
    p.add_argument("--seed", type=int, default=0, help="seed for data, init and augmentation")
    p.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    p.set_defaults(func=_cmd_train)


from experiments import bench_layers  # noqa: E402, F401  (registers the 'layers' subcommand)


def build_parser() -> argparse.ArgumentParser:
    parser = _cli.ArgumentParser(
        prog="python -m experiments.bench",
        description="Speed tables for jaxcnn. Pick a subcommand; each has its own --help.",
        formatter_class=_cli.HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for subcommands that re-run themselves (train --xla-flags)
    return args.func(args)


if __name__ == "__main__":
    _cli.run(main)
