"""conv_reference against lax conv against four numpy loops: ``python -m experiments.bench ops``.

A cnn-sized layer (batch 128, 32x32x32 -> 32 channels, 3x3 kernel, SAME, float32):
``ops.conv`` (XLA's convolution) against ``ops.conv_reference`` (gather the windows,
multiply-accumulate, hand-written backward), forward and forward+backward (gradient with
respect to input and kernel), each jitted, warmed up, then the median of ``--repeats``
interleaved calls. Then a course-style numpy convolution written as four Python loops on a
smaller problem (batch 2, 16x16x8 -> 8), timed per output element, and the per-element
speed-up of ``conv_reference`` over it.

Bars (from docs/design.md): conv_reference within 3x of lax conv; >= 1000x faster per output
element than the numpy loops. Measured results: ``visuals/bench/README.md``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from experiments import _cli
from experiments._cli import positive_int
from experiments.bench.common import time_interleaved

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
# The table
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


def command(args: argparse.Namespace) -> int:
    r = bench_ops(batch=args.batch, repeats=args.repeats, loop_repeats=args.loop_repeats,
                  seed=args.seed)
    print(json.dumps(r) if args.json else format_ops(r))
    return 0


def add_parser(sub) -> None:
    """Add the ``ops`` subcommand to ``sub`` (argparse subparsers)."""
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
    p.set_defaults(func=command)
