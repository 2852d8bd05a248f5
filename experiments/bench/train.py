"""Train and eval images/s through the real training path: ``python -m experiments.bench train``.

Train and eval images/s of ``mlp`` and ``cnn3`` at batch 128 and 512 on all devices, through
the project's real training path: the state and jitted steps that :func:`jaxcnn.train.fit`
trains with, from the same builder (:func:`jaxcnn.train.build`) and each model's recipe of
``experiments.cifar10`` (:mod:`jaxcnn.train.recipes`; cnn3: SGD Nesterov, label smoothing,
random crop + flip on device; mlp: AdamW, no augmentation) on a ("data",) mesh, host
batches from ``epoch_batches`` through ``shard_batch``, traced with the kernels of
``--backend`` (:mod:`jaxcnn.ops.backend`). Data: synthetic uint8 32x32x3 images (speed does
not depend on pixel values). Protocol: trace+lower+compile each step (``compile_s``; the jit
cache then holds it), ``--warmup`` steps, then ``--repeats`` round-robin rounds; each round
runs a window of ``--steps`` train steps and one of eval steps for every (model, batch) case,
then the input pipeline (:func:`jaxcnn.data.pipeline_images_per_s`: shuffled host batches ->
device -> augment + normalise) once per batch size; medians over rounds, device syncs only at
window ends. ``pipe/train`` is pipeline images/s over train images/s (bar >= 5x, checked for
cnn3).

``--model-option key=value`` (or ``model.key=value``) passes options to
``jaxcnn.models.create``; ``--xla-flags='...'`` re-runs the benchmark in a subprocess with
those XLA_FLAGS; ``--dtype bfloat16`` as in ``experiments.cifar10``. ``--json`` prints one
object keyed by model: the first of ``--batch-sizes`` under the plain name (``"cnn3"``), the
others as ``"cnn3@512"``; each entry has ``batch_size``, ``train_images_per_s``,
``eval_images_per_s``, ``compile_s``, ``peak_rss_mb`` (the bench process's peak resident
set size, ``VmHWM``: the whole process, every case, not one model), ``jaxcnn_backend`` (the
kernels it ran) and more. ``resnet20`` (or any registered model) is benchmarked with
``--models cnn3,resnet20``. With ``--baselines`` (:mod:`experiments.bench.baselines`) Keras
and PyTorch run the same models; the table gains, per model and framework, train and eval
images/s, peak RSS and the ratios jaxcnn / baseline. JSON: ``"baseline:keras-tf"``,
``"baseline:torch"`` for cnn3 (with ``cnn3_ratio``), ``"baseline:keras-tf:resnet20"``,
``"baseline:torch:resnet20"`` for resnet20; every entry has ``model``,
``train_images_per_s``, ``eval_images_per_s``, ``peak_rss_mb``, ``train_ratio`` and
``eval_ratio`` (jaxcnn / baseline), or ``error``.

Bars (from docs/design.md): cnn3 train images/s >= Keras (TF) and PyTorch on the same machine;
input pipeline >= 5x the train step. Measured results, each with its command and machine
(and what was tried to speed up the cnn3 train step on the CPU): ``visuals/bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from experiments import _cli
from experiments._cli import positive_int
from experiments.bench.baselines import (
    BASELINE_MODELS,
    add_baselines,
    baseline_key,
    format_baselines,
)
from experiments.bench.common import (
    TrainCase,
    add_backend_flag,
    add_model_flags,
    csv,
    kernels_label,
    model_args,
    options_for,
    peak_rss_mb,
    synthetic_cifar,
)
from jaxcnn.host_malloc import reuse_freed_memory

TRAIN_MODELS = ("mlp", "cnn3")
TRAIN_BATCH_SIZES = (128, 512)
PIPELINE_BAR = 5.0  # docs/design.md: the input pipeline delivers >= 5x what the train step consumes
RSS_SCOPE = "the whole bench process (every model and batch size, the input pipeline)"
_REEXEC_ENV = "JAXCNN_BENCH_XLA_REEXEC"


@reuse_freed_memory()  # as jaxcnn.train.fit runs steps with buffers within 1 GiB
def bench_train(models: tuple[str, ...] = TRAIN_MODELS,
                batch_sizes: tuple[int, ...] = TRAIN_BATCH_SIZES, steps: int = 20,
                repeats: int = 3, warmup: int = 2, model_options: dict | None = None,
                dtype: str = "float32", dataset_size: int = 10_000,
                pipeline_batches: int = 50, backend: str = "auto", seed: int = 0) -> dict:
    """Measure the ``train`` table; returns a JSON-ready dict.

    Every (model, batch size) case is built and compiled first, with the kernels of
    ``backend`` (compile time = trace + lower + compile of the train step; the eval step's
    separately), warmed up with ``warmup`` train and eval steps, then timed round-robin: each
    of ``repeats`` rounds runs, for every case in turn, a window of ``steps`` train steps and a
    window of ``steps`` eval steps, and then the input pipeline
    (:func:`jaxcnn.data.pipeline_images_per_s`, ``pipeline_batches`` batches) once per batch
    size. Rates are medians over the rounds; device syncs only at window ends.
    """
    import jax

    from jaxcnn.data import pipeline_images_per_s
    from jaxcnn.models import create
    from jaxcnn.ops import backend as kernel_backend
    from jaxcnn.train import make_mesh

    model_options = model_options or {}
    models, batch_sizes = tuple(dict.fromkeys(models)), tuple(dict.fromkeys(batch_sizes))
    mesh = make_mesh()
    dataset = synthetic_cifar(max(dataset_size, max(batch_sizes)), seed=seed)
    cases = []
    with kernel_backend.use(backend) as kernels:
        for name in models:
            opts = options_for(name, model_options)
            if dtype != "float32":
                opts["dtype"] = jax.numpy.dtype(dtype)
            model = create(name, num_classes=dataset.num_classes, **opts)
            for bs in batch_sizes:
                case = TrainCase(name, bs, dataset, mesh, model, dtype, seed)
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
            "jaxcnn_backend": kernels,
            "peak_rss_mb": rss,
            "peak_rss_of": RSS_SCOPE,
        }
    return {
        "rows": rows,
        "meta": {
            "backend": jax.default_backend(),
            "jaxcnn_backend": {"asked": backend, "resolved": kernels},
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


def train_json(r: dict) -> dict:
    """The ``--json`` object: the rows keyed by model (``"cnn3"`` for the first batch size,
    ``"cnn3@512"`` for others), plus the baselines when run (:func:`baseline_key`)."""
    out = dict(r["rows"])
    for model, by_fw in r.get("baselines", {}).items():
        for fw, b in by_fw.items():
            out[baseline_key(model, fw)] = b
    return out


def format_train(r: dict) -> str:
    """The ``train`` result as a plain-text table."""
    m = r["meta"]
    lines = [
        f"backend {m['backend']} ({m['device']}, {m['devices']} device(s)); {m['dtype']}; "
        f"{m['data']}; kernels {kernels_label(m['jaxcnn_backend'])}",
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


def command(args: argparse.Namespace) -> int:
    if args.xla_flags and not os.environ.get(_REEXEC_ENV):
        return _reexec_with_xla_flags(args)
    model_options = model_args(args)
    r = bench_train(models=args.models, batch_sizes=args.batch_sizes, steps=args.steps,
                    repeats=args.repeats, warmup=args.warmup, model_options=model_options,
                    dtype=args.dtype, dataset_size=args.dataset_size,
                    pipeline_batches=args.pipeline_batches, backend=args.backend,
                    seed=args.seed)
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


def add_parser(sub) -> None:
    """Add the ``train`` subcommand to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "train",
        help="train/eval images/s of mlp and cnn3 (or --models), compile time, input "
        "pipeline, peak RSS, baselines",
        description="Time the project's real training path (the state and jitted steps of "
        "jaxcnn.train.build, which fit trains with, for each model's recipe from "
        "jaxcnn.train.recipes -- cnn3 with crop+flip augmentation, mlp without -- on a mesh of "
        "all devices, batches from epoch_batches through shard_batch, as fit does), traced with "
        "the kernels of --backend, on synthetic uint8 32x32x3 data. "
        "Protocol: compile, warm up, then the median of --repeats round-robin windows of "
        "--steps steps, waiting for the device only at the window ends. Also the input "
        "pipeline's images/s (jaxcnn.data.pipeline_images_per_s) and its ratio to the train "
        "step (bar: >= 5x), and the peak RSS of the bench process. --json prints one object "
        "keyed by model: the first batch size as 'cnn3', others as 'cnn3@512'; baselines as "
        "'baseline:keras-tf', 'baseline:torch' (cnn3) and 'baseline:keras-tf:resnet20', "
        "'baseline:torch:resnet20'.",
        formatter_class=_cli.HelpFormatter,
    )
    add_model_flags(p, TRAIN_MODELS, example="cnn3.dense=64")
    add_backend_flag(p)
    p.add_argument("--batch-sizes", type=csv(positive_int), default=TRAIN_BATCH_SIZES,
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
    p.set_defaults(func=command)
