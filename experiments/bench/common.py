"""What the benchmarks share: timers, flags (``--backend``, ``--models``, ``--model-option``),
peak RSS, synthetic CIFAR-shaped data and one (model, batch size) case of the real training path.

Every benchmark module imports this one; this one imports no benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from experiments._cli.results import peak_rss_mb  # noqa: F401  (re-exported for the benches)
from jaxcnn.ops.backend import BACKENDS

BASELINES_DIR = Path(__file__).resolve().parents[1] / "baselines"

# --------------------------------------------------------------------------------------------
# Timers
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


# --------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------


def csv(kind: Callable) -> Callable:
    """An argparse ``type``: ``"a,b"`` -> ``(kind("a"), kind("b"))``."""
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return tuple(kind(s) for s in items)

    return parse


def add_backend_flag(p: argparse.ArgumentParser) -> None:
    """``--backend``: the kernels the timed models are traced with (:mod:`jaxcnn.ops.backend`)."""
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="kernels of the timed models (jaxcnn.ops.backend): lax (XLA's own), "
                   "fast (pure JAX with hand-written backward passes), onednn (oneDNN "
                   "convolutions and native BatchNorm kernels) or auto (onednn where installed, "
                   "else fast, on the CPU; lax on GPU/TPU)")


def kernels_label(setting: dict) -> str:
    """``{"asked": "auto", "resolved": "onednn"}`` -> ``"onednn (--backend auto)"``; just the
    name when it was asked for by name."""
    asked, resolved = setting["asked"], setting["resolved"]
    return resolved if asked == resolved else f"{resolved} (--backend {asked})"


def add_model_flags(p: argparse.ArgumentParser, default_models: tuple[str, ...],
                    example: str) -> None:
    """``--models`` (comma-separated, default ``default_models``) and ``--model-option``
    (:func:`parse_model_options`; ``example``: one in the help) of a subcommand that benchmarks
    registered models; read them back with :func:`model_args`."""
    p.add_argument("--models", type=csv(str), default=default_models,
                   help="comma-separated model names (jaxcnn.models.available())")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option for jaxcnn.models.create, repeatable: key=value goes to every "
                   "model that accepts key, model.key=value to one model (e.g. "
                   f"{example}); values are Python literals or strings")


def parse_model_options(items: list[str] | None) -> dict[str, dict]:
    """``["dense=64", "cnn3.dtype=bfloat16"]`` -> ``{"*": {"dense": 64}, "cnn3": {"dtype":
    "bfloat16"}}``.

    ``key=value`` applies to every benchmarked model that accepts ``key``; ``model.key=value``
    to that model only. Values are Python literals when they parse as one (``3``, ``0.5``,
    ``True``, ``(32, 64)``), else strings. The kernels are no model option (``conv_impl``
    says to use ``--backend``).
    """
    import ast

    out: dict[str, dict] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--model-option must be key=value or model.key=value, got {item!r}")
        scope, _, key = key.rpartition(".")
        if key == "conv_impl":
            raise ValueError(f"--model-option {item}: the models have no conv_impl; pick the "
                             f"kernels with --backend {{{','.join(BACKENDS)}}}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out.setdefault(scope or "*", {})[key] = value
    return out


def model_args(args: argparse.Namespace) -> dict[str, dict]:
    """The parsed ``--model-option``s of ``args`` (:func:`add_model_flags`), after checking that
    every name in ``--models`` is a registered model and that every global option is accepted
    by one of them (ValueError otherwise)."""
    from jaxcnn.models import available

    unknown = [m for m in args.models if m not in available()]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {unknown}; available: "
                         f"{', '.join(available())}")
    model_options = parse_model_options(args.model_option)
    check_global_options(list(args.models), model_options)
    return model_options


def check_global_options(models: list[str], model_options: dict[str, dict]) -> None:
    """ValueError when a ``key=value`` option (scope ``"*"``) fits none of ``models``."""
    from jaxcnn.models import supported_options

    for key, value in model_options.get("*", {}).items():
        if not any(supported_options(m, {key: value}) for m in models):
            raise ValueError(f"--model-option {key}: none of the models {models} accepts it")


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


# --------------------------------------------------------------------------------------------
# Data and the real training path
# --------------------------------------------------------------------------------------------


def synthetic_cifar(n: int, seed: int = 0):
    """``n`` random uint8 CIFAR-shaped images (32x32x3) and labels in [0, 10), as an
    ``ArrayDataset``: speed does not depend on the pixel values."""
    from jaxcnn.data import ArrayDataset

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.int32)
    return ArrayDataset(images, labels, tuple(f"class{i}" for i in range(10)))


class TrainCase:
    """One (model, batch size): the state and jitted steps that ``jaxcnn.train.fit`` trains
    with (:func:`jaxcnn.train.build`, the model's recipe of ``experiments.cifar10``), and an
    endless batch source. Build, compile and time it inside ``jaxcnn.ops.backend.use(...)``:
    the kernels are chosen when the steps are traced."""

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
