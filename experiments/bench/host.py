"""How much of a train step is host work: ``python -m experiments.bench host``.

One model (default ``cnn3`` with its CIFAR-10 recipe from :mod:`jaxcnn.train.recipes`: SGD
Nesterov, label smoothing, random crop + flip on device) at one batch size (default 128) on a
mesh of every device, on synthetic uint8 32x32x3 data (speed does not depend on pixel values),
traced with the kernels of ``--backend`` (:mod:`jaxcnn.ops.backend`).
Four ways to run the same jitted train step, timed as windows of ``--steps`` steps that wait
for the device only at their end (``block_until_ready``), after a warm-up, round-robin over
``--repeats`` rounds; the table shows medians in ms per step and images/s:

``resident``
    one batch already on the devices, fed again and again: the step itself plus its Python
    dispatch, no batch assembly and no copy (the floor).
``host``
    what ``fit`` does with ``data_on_device=False``: ``epoch_batches`` gathers each batch in
    numpy, ``shard_batch`` copies it to the devices, then the step.
``device xK``
    what ``fit`` does with ``data_on_device=True``: the uint8 training set is put on the
    devices once; each call sends only row indices and runs K steps (``steps_per_dispatch``,
    ``lax.scan`` when K > 1) that gather their batches on the device.

``warm-up s`` is each path's first K steps, in table order, with the compilation of the
programs it is the first to use (``resident`` compiles the step that ``host`` then reuses;
``device xK`` compiles K steps as one program, unrolled on CPU).
``host share`` = (host - resident) / host: the share of a host-path step spent on host work
(batch gather, host-to-device copy and what of it does not overlap with the device). Below
the table, the two host pieces are also timed alone (no step running).

The same state, steps and batch order as :func:`jaxcnn.train.fit` (built by
:func:`jaxcnn.train.build` and fed by :func:`jaxcnn.train.make_feed`). The result is also
written to ``<workdir>/bench_host.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from experiments import _cli
from experiments.bench.common import add_backend_flag, kernels_label, synthetic_cifar


def add_parser(sub) -> None:
    """Add the ``host`` subcommand to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "host",
        help="how much of a train step is host work: batch on the device vs fit's host and "
        "device paths",
        description="How much of a train step is host work: step time with the batch already "
        "on the device vs fit's host path (numpy batch + copy) and its device path (dataset "
        "kept on the device).",
        formatter_class=_cli.HelpFormatter,
    )
    _cli.add_common(p, "bench_host", visuals=False)
    p.add_argument("--model", default="cnn3", help="model name from jaxcnn.models.available()")
    p.add_argument("--batch-size", type=_cli.positive_int, default=128,
                   help="global train batch (a multiple of the device count)")
    p.add_argument("--steps", type=_cli.positive_int, default=16,
                   help="train steps per timed window (a multiple of --steps-per-dispatch)")
    p.add_argument("--repeats", type=_cli.positive_int, default=3,
                   help="timed rounds; every path runs one window per round; medians reported")
    p.add_argument("--steps-per-dispatch", type=_cli.positive_int, default=8,
                   help="K of the 'device xK' row (steps per call with lax.scan)")
    p.add_argument("--dataset-size", type=_cli.positive_int, default=None,
                   help="synthetic training images (default: 10 epochs' worth of K-step calls "
                        "at this batch, 10,240 for 128 x 8, so every call has K steps)")
    add_backend_flag(p)
    p.set_defaults(func=command)


def _endless(feed, state):
    """``(state, metrics, steps)`` of ``feed`` over epoch after epoch."""
    epoch = 0
    while True:
        for new_state, metrics, k in feed.epoch(state, epoch):
            state = new_state
            yield state, metrics, k
        epoch += 1


class _Path:
    def __init__(self, name, source):
        self.name, self.source, self.times, self.first_s = name, source, [], None

    def window(self, steps: int) -> float:
        import jax

        t0 = time.perf_counter()
        done, last = 0, None
        while done < steps:
            state, metrics, k = next(self.source)
            done += k
            last = (state, metrics)
        jax.block_until_ready(last)
        return (time.perf_counter() - t0) / done


def run(args: argparse.Namespace) -> dict:
    """Measure the table with the kernels of ``args.backend``; returns a JSON-ready dict."""
    from jaxcnn.ops import backend as kernel_backend

    with kernel_backend.use(args.backend) as kernels:
        return {**_measure(args), "jaxcnn_backend": {"asked": args.backend,
                                                     "resolved": kernels}}


def _measure(args: argparse.Namespace) -> dict:
    """The four paths and the host pieces (module docstring), with the kernels in effect."""
    import jax

    from jaxcnn import models
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD, epoch_batches
    from jaxcnn.train import build, make_feed, make_mesh, recipes, shard_batch
    from jaxcnn.train.mesh import check_batch_size

    if args.model not in models.available():
        raise ValueError(f"--model: unknown model {args.model!r}; available: "
                         f"{', '.join(models.available())}")
    k = args.steps_per_dispatch
    if args.steps % k:
        raise ValueError(f"--steps {args.steps} is not a multiple of --steps-per-dispatch {k}")
    mesh = make_mesh()
    check_batch_size(args.batch_size, mesh)  # a ValueError: one error line via _cli.run
    bs = args.batch_size
    n = args.dataset_size or bs * k * 10
    if n < bs * k:
        raise ValueError(f"--dataset-size {n} holds fewer than one call of {k} steps of batch "
                         f"{bs}")
    data = synthetic_cifar(n, args.seed)
    config = recipes.with_overrides(recipes.for_model(args.model),
                                    {"batch_size": bs, "seed": args.seed})
    model = models.create(args.model, num_classes=10)

    def engine():  # a fresh starting state each time (the steps are compiled once)
        return build(model, config, data, normalization=(CIFAR10_MEAN, CIFAR10_STD), mesh=mesh)

    def fresh_state():
        return engine().state

    def feed(on_device, steps_per_dispatch=1):
        return make_feed(engine(), data, on_device=on_device,
                         steps_per_dispatch=steps_per_dispatch)

    host = feed(False)
    images, labels = next(epoch_batches(data, bs, seed=args.seed))
    x, y = shard_batch(mesh, images, labels)

    def resident():
        state = fresh_state()
        while True:
            state, metrics = host.step(state, x, y)
            yield state, metrics, 1

    paths = [
        _Path("resident", resident()),
        _Path("host", _endless(host, fresh_state())),
        _Path("device x1", _endless(feed(True, 1), fresh_state())),
    ]
    if k > 1:
        paths.append(_Path(f"device x{k}", _endless(feed(True, k), fresh_state())))
    print(f"{args.model}, batch {bs}, {mesh.size} {jax.devices()[0].platform} device(s); "
          f"warming up (compiles) ...", flush=True)
    for path in paths:
        t0 = time.perf_counter()
        path.window(k)  # compile + warm-up: K steps (one call of each shape)
        path.first_s = time.perf_counter() - t0
    for _ in range(args.repeats):
        for path in paths:
            path.times.append(path.window(args.steps))

    # The host pieces alone (nothing else running).
    batches = epoch_batches(data, bs, seed=args.seed + 1)
    t0 = time.perf_counter()
    host_batches = [next(batches) for _ in range(args.steps)]
    gather_s = (time.perf_counter() - t0) / args.steps
    copy_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready([shard_batch(mesh, a, b) for a, b in host_batches])
        copy_times.append((time.perf_counter() - t0) / args.steps)
    copy_s = statistics.median(copy_times)

    rows = {p.name: statistics.median(p.times) for p in paths}
    share = (rows["host"] - rows["resident"]) / rows["host"]
    return {
        "model": args.model,
        "batch_size": bs,
        "devices": mesh.size,
        "platform": jax.devices()[0].platform,
        "device_kind": str(jax.devices()[0].device_kind),
        "steps_per_window": args.steps,
        "repeats": args.repeats,
        "dataset_size": n,
        "ms_per_step": {name: 1e3 * s for name, s in rows.items()},
        "images_per_s": {name: bs / s for name, s in rows.items()},
        "warmup_s": {p.name: p.first_s for p in paths},
        "host_share": share,
        "host_gather_ms": 1e3 * gather_s,
        "host_to_device_ms": 1e3 * copy_s,
    }


def format_table(r: dict) -> str:
    head = f"{'path':<34} {'ms/step':>9} {'img/s':>8} {'vs host':>8} {'warm-up s':>10}"
    lines = [
        f"{r['model']}, batch {r['batch_size']}, {r['devices']} {r['platform']} device(s) "
        f"({r['device_kind']}), kernels {kernels_label(r['jaxcnn_backend'])}; medians of "
        f"{r['repeats']} windows of {r['steps_per_window']} steps",
        "",
        head,
        "-" * len(head),
    ]
    labels = {
        "resident": "data already on device (floor)",
        "host": "host path (numpy batch + copy)",
    }
    host = r["ms_per_step"]["host"]
    for name, ms in r["ms_per_step"].items():
        label = labels.get(name, f"{name.replace('x', 'path, ')} step(s)/call")
        lines.append(f"{label:<34} {ms:>9.2f} {r['images_per_s'][name]:>8.0f} "
                     f"{host / ms:>7.3f}x {r['warmup_s'][name]:>10.1f}")
    lines += [
        "",
        f"host share of a host-path step: (host - floor) / host = {100 * r['host_share']:.1f}%",
        f"host pieces alone: batch gather {r['host_gather_ms']:.2f} ms, host-to-device copy "
        f"{r['host_to_device_ms']:.2f} ms per batch",
    ]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    result = run(args)
    print(format_table(result))
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / "bench_host.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nresults: {out}")
    return 0
