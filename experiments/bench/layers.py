"""Where every millisecond of a train step goes: ``python -m experiments.bench layers``.

For each model (default ``cnn3`` and ``resnet20``, batch 128, float32):

* every distinct convolution shape of the model, found by tracing it (``nn.intercept_methods``
  on ``jaxcnn.models.layers.Conv`` / ``nn.Conv`` calls during an abstract ``init``), with how
  many layers share it; each timed three ways, each separately jitted: forward, input gradient
  (``jax.vjp`` w.r.t. x only) and kernel gradient (``jax.vjp`` w.r.t. the kernel only), with
  the function the model's ``Conv`` runs on the chosen ``--backend`` (``jaxcnn.ops.backend``:
  ``lax.conv_general_dilated`` for "lax", ``jaxcnn.ops.fast_conv.conv2d_fast`` for "fast",
  ``jaxcnn.ops.onednn.conv2d_onednn`` for "onednn"); GFLOP/s of each (FLOPs =
  ``2*N*Ho*Wo*kh*kw*Cin*Cout`` for all three) and its % of the peak;
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

The models are built, traced, compiled and timed inside ``jaxcnn.ops.backend.use(--backend)``;
tracing: :mod:`experiments.bench.layers_trace`, timers: :mod:`experiments.bench.layers_timing`.

The peak is the best GFLOP/s of large float32 ``jnp.dot`` GEMMs (``--gemm-sizes`` square),
stated in the header with the CPU's flags (avx2 / avx512f / avx512_bf16) and jax's version.
Conv timings are medians of ``--repeats`` round-robin calls (fwd, dx, dk in turn) after a
warm-up; the step's, the median of ``--repeats`` windows after ``--warmup`` steps.
``--json PATH`` also writes the results as one JSON object (``-``: print only the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from experiments import _cli
from experiments._cli import positive_int
from experiments.bench.common import (
    TrainCase,
    add_backend_flag,
    add_model_flags,
    csv,
    kernels_label,
    model_args,
    options_for,
    synthetic_cifar,
)
from experiments.bench.layers_timing import (
    DIRECTIONS,
    GEMM_SIZES,
    conv_row,
    cpu_info,
    gemm_peak,
    time_augment,
    time_conv,
    time_host_input,
    time_optimizer,
    time_parts,
)
from experiments.bench.layers_trace import Part, trace_model
from jaxcnn.host_malloc import reuse_freed_memory

LAYER_MODELS = ("cnn3", "resnet20")
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

    dataset = synthetic_cifar(max(8 * batch_size, 256), seed=seed)
    case = TrainCase(name, batch_size, dataset, make_mesh(), model, "float32", seed)
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


def make_model(name: str, model_options: dict):
    """``jaxcnn.models.create(name, num_classes=10)`` with its ``--model-option``s."""
    from jaxcnn.models import create

    return create(name, num_classes=10, **options_for(name, model_options))


def bench_model(name: str, backend: str = "auto", batch_size: int = 128, repeats: int = 5,
                steps: int = 10, warmup: int = 2, peak_gflops: float = 1.0,
                model_options: dict | None = None, seed: int = 0) -> dict:
    """One model's results: conv rows, the step, the rest and its parts (JSON-ready), all
    traced and timed with the kernels of ``backend``."""
    from jaxcnn.ops import backend as kernel_backend

    with kernel_backend.use(backend):
        model = make_model(name, model_options or {})
        groups, parts = trace_model(model, (batch_size, 32, 32, 3))
        rows = [conv_row(g, time_conv(g.shape, repeats, seed), peak_gflops) for g in groups]
        step = time_train_step(name, model, batch_size, steps, repeats, warmup, seed)
        rest = rest_parts(parts, step["case"], repeats, seed)
    conv_ms = sum(r["step_ms"] for r in rows)
    for r in rows:
        r["step_share"] = r["step_ms"] / step["ms"]
    rest_ms = step["ms"] - conv_ms
    return {
        "conv_kernels": sorted({g.shape.impl for g in groups}),
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


@reuse_freed_memory()  # as jaxcnn.train.fit runs steps with buffers within 1 GiB
def bench_layers(models: tuple[str, ...] = LAYER_MODELS, backend: str = "auto",
                 batch_size: int = 128, repeats: int = 5, steps: int = 10, warmup: int = 2,
                 gemm_sizes: tuple[int, ...] = GEMM_SIZES, model_options: dict | None = None,
                 seed: int = 0) -> dict:
    """Measure the ``layers`` tables: the machine (CPU flags, GEMM peak) once, then every model
    (:func:`bench_model`). Returns a JSON-ready dict ``{"meta", "peak", "models"}``."""
    import jax

    from jaxcnn.ops import backend as kernel_backend

    peak = gemm_peak(gemm_sizes, repeats=repeats, seed=seed)
    results = {name: bench_model(name, backend, batch_size, repeats, steps, warmup,
                                 peak["gflops"], model_options, seed)
               for name in dict.fromkeys(models)}
    return {
        "meta": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(),
            "cpu": cpu_info(),
            "jaxcnn_backend": {"asked": backend, "resolved": kernel_backend.resolve(backend)},
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
    head = (f"{name}: {_plural(m['convs'], 'conv')}, {len(m['layers'])} distinct (kernels "
            f"{', '.join(m['conv_kernels']) or '-'}); train step = {rec['optimizer']} recipe"
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
    lines = [
        f"jax {meta['jax']}, backend {meta['backend']} ({meta['device']}, {meta['devices']} "
        f"device(s)); CPU {cpu['model']}, {cpu['cores']} cores; {flags}",
        f"peak: {peak['gflops']:.1f} GFLOP/s = best float32 jnp.dot GEMM (n x n, GFLOP/s: "
        f"{sizes})",
        f"kernels {kernels_label(meta['jaxcnn_backend'])}; batch {meta['batch_size']}, "
        f"{meta['dtype']}; convs: median of {meta['repeats']} interleaved calls; step: median "
        f"of {meta['repeats']} windows of {meta['steps']} steps",
        "FLOPs of fwd (forward), dx (input gradient) and dk (kernel gradient) alike: "
        "2*N*Ho*Wo*kh*kw*Cin*Cout; %pk = GFLOP/s / peak",
    ]
    for name, m in r["models"].items():
        lines += ["", format_model(name, m)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The subcommand
# --------------------------------------------------------------------------------------------


def command(args: argparse.Namespace) -> int:
    r = bench_layers(models=args.models, backend=args.backend, batch_size=args.batch_size,
                     repeats=args.repeats, steps=args.steps, warmup=args.warmup,
                     gemm_sizes=args.gemm_sizes, model_options=model_args(args), seed=args.seed)
    if args.json == "-":
        print(json.dumps(r))
        return 0
    print(format_layers(r))
    if args.json:
        print(f"\nresults: {_cli.write_json(args.json, r)}")
    return 0


def add_parser(sub) -> None:
    """Add the ``layers`` subcommand to ``sub`` (argparse subparsers)."""
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
    add_model_flags(p, LAYER_MODELS, example="resnet20.shortcut=B for its 1x1 projection convs")
    add_backend_flag(p)
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
    p.set_defaults(func=command)
