"""The speedrun's measurements: fit a net, evaluate it with TTA, count its work, export it.

Each run's row (``results.json``) gives, next to its accuracy:

* ``train_seconds``: the wall time of every epoch (from its first step to its checkpoint,
  the held-out evaluation included when ``--eval-every`` asks for it) minus the time JAX spent
  compiling, which is ``compile_seconds`` (both from the run's history, so a resumed run
  reports its whole training);
* ``train_pflop``: XLA's count of one training step (forward, backward and the optimizer
  update, from the lowered program) times the run's steps; ``train_pflop_50k`` the same for a
  run on 50,000 images (the steps of ``50_000 // batch`` per epoch); ``eval_gflop``: the TTA
  evaluation of the held-out split, counted the same way;
* ``peak_rss_mib``: the process's peak resident memory so far (``VmHWM``), also read right
  after training (``peak_rss_after_fit_mib``), so the peak is placed in training or after it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from experiments import _cli
from experiments._cli.results import peak_rss_mb

# The size of CIFAR-10's training split: the FLOPs of a full run are quoted for it.
FULL_TRAIN = 50_000


@dataclasses.dataclass(frozen=True)
class Trained:
    """One fitted net: what :func:`evaluate_and_export` needs, and who trained it."""

    name: str
    model_name: str
    model: object
    options: dict
    config: object
    result: object  # jaxcnn.train.FitResult
    peak_rss_after_fit_mib: float


def fit_net(name: str, model_name: str, options: dict, config, train, evaluation, args,
            workdir) -> Trained:
    """Fit the registry's ``model_name(**options)`` with ``config`` (checkpoints in
    ``workdir``, resumed unless ``--no-resume``)."""
    from jaxcnn import models
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.train import fit

    model = models.create(model_name, num_classes=train.num_classes, **options)
    result = fit(model, train, evaluation, config=config, workdir=workdir,
                 normalization=(CIFAR10_MEAN, CIFAR10_STD), resume=args.resume,
                 progress=args.progress)
    return Trained(name, model_name, model, options, config, result, peak_rss_mb())


def float32_twin(trained: Trained, train):
    """``trained``'s net in float32: the FLOPs of a recipe are counted on it whatever the run's
    dtype, so runs compare in one unit (a bfloat16 step also counts its dtype conversions:
    +0.24% for airbench94_muon)."""
    from jaxcnn import models

    return models.create(trained.model_name, num_classes=train.num_classes,
                         **{k: v for k, v in trained.options.items() if k != "dtype"})


def training_pflop(trained: Trained, train) -> tuple[float, float, float]:
    """XLA's FLOPs of a training step of ``trained`` (lowered, on the CPU's JAX kernels, in
    float32 whatever the run's dtype; the mean over the run's steps: an epoch's step skips the
    gradients of the parameters frozen by then), and the PFLOP of this run and of the same run
    on 50,000 images."""
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.flops import train_step_flops
    from jaxcnn.train.builder import build

    # without the data-dependent init
    config = trained.config
    engine = build(float32_twin(trained, train), dataclasses.replace(
                       config, init_fn=None, dtype="float32"), train,
                   normalization=(CIFAR10_MEAN, CIFAR10_STD))
    counted: dict[int, float] = {}  # id(step) -> its FLOPs (the epochs share few programs)
    per_epoch = []
    for epoch in range(config.epochs):
        step = engine.train_steps_for(epoch)[0]
        if id(step) not in counted:
            counted[id(step)] = train_step_flops(step, engine.state, config.batch_size,
                                                 train.image_shape)
        per_epoch.append(counted[id(step)])
    mean_step = float(np.mean(per_epoch))
    steps = config.epochs * engine.steps_per_epoch
    steps_50k = config.epochs * (FULL_TRAIN // config.batch_size)
    return mean_step, mean_step * steps / 1e15, mean_step * steps_50k / 1e15


def evaluate_and_export(name: str, trained: Trained, tta: str, train, evaluation, args,
                        workdir: Path) -> tuple[dict, dict]:
    """Evaluate a fitted net with ``tta``, measure its work, export its bundle to
    ``workdir/bundle``; returns (row, outcome)."""
    from jaxcnn import export, models
    from jaxcnn.evaluate import accuracy, predict_logits
    from jaxcnn.flops import tta_flops

    model, config, result = trained.model, trained.config, trained.result
    variables = result.state.variables
    prep = result.preprocess
    start = time.perf_counter()
    plain = predict_logits(model.apply, variables, evaluation.images, mean=prep.mean,
                           std=prep.std, batch_size=args.eval_batch_size)
    logits = plain if tta == "none" else predict_logits(
        model.apply, variables, evaluation.images, mean=prep.mean, std=prep.std,
        batch_size=args.eval_batch_size, tta=tta)
    eval_s = time.perf_counter() - start
    history = result.history
    compile_s = float(sum(h.get("compile_seconds", 0.0) for h in history))
    # Epoch 1 includes compilation: the steady rate is the median of the others.
    steady = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    img_s = float(np.median(steady)) if steady else float("nan")
    step_flops, pflop, pflop_50k = training_pflop(trained, train)
    per_image = step_flops / config.batch_size
    row = {
        "run": name,
        "model": trained.model_name,
        "accuracy": accuracy(logits, evaluation.labels),
        "accuracy_no_tta": accuracy(plain, evaluation.labels),
        "tta": tta,
        "eval_split": args.eval_split,
        "n_train": len(train),
        "epochs": config.epochs,
        "train_seconds": float(sum(h["epoch_seconds"] for h in history)) - compile_s,
        "compile_seconds": compile_s,
        "eval_seconds": eval_s,
        "seconds_per_epoch": float(np.median([h["epoch_seconds"] for h in history[1:]]))
        if len(history) > 1 else float("nan"),
        "images_per_s": img_s,
        "train_gflop_per_step": step_flops / 1e9,
        "train_gflop_per_image": per_image / 1e9,
        "train_pflop": pflop,
        "train_pflop_50k": pflop_50k,
        "eval_gflop": tta_flops(float32_twin(trained, train), variables, train.image_shape, tta)
        * len(evaluation) / 1e9,
        "gflop_per_s": img_s * per_image / 1e9,
        "peak_rss_after_fit_mib": trained.peak_rss_after_fit_mib,
        "params": models.count_params(variables["params"]),
        "model_options": {k: v for k, v in trained.options.items() if k != "dtype"},
        "recipe": config.to_dict(),
        "history": [h["eval_accuracy"] for h in history],
    }
    if trained.name != name:
        row["trained_as"] = trained.name  # the same training as that run, another TTA
    export.save(workdir / "bundle", model_name=trained.model_name, model_options=trained.options,
                variables=variables, class_names=train.class_names,
                preprocessing=dict(input_size=train.image_shape[:2], mean=prep.mean,
                                   std=prep.std),
                metrics={k: v for k, v in row.items() if k not in ("recipe", "history")},
                tta=tta)
    row["peak_rss_mib"] = peak_rss_mb()
    return row, dict(history=history, logits=logits)


def write_ladder_figure(figures: Path, rows, outcomes, n_train: int, args) -> None:
    """Held-out accuracy (no TTA) after each epoch for every rung, and each rung's final
    accuracy with its TTA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    f, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, row in enumerate(rows):
        acc = [h["eval_accuracy"] for h in outcomes[row["run"]]["history"]]
        ax.plot(range(1, len(acc) + 1), acc, marker="o", ms=3, color=f"C{i}", label=row["run"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"accuracy on {args.eval_split} (no TTA)")
    ax.set_title(f"Ablation ladder: {n_train:,} training images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    names = [r["run"] for r in rows]
    accs = [r["accuracy"] for r in rows]
    bars = bx.barh(names, accs, color=[f"C{i}" for i in range(len(rows))])
    for b, a in zip(bars, accs, strict=True):
        bx.text(a, b.get_y() + b.get_height() / 2, f" {a:.1%}", va="center", fontsize=8)
    bx.invert_yaxis()
    bx.set_xlim(min(accs) - 0.05, min(1.0, max(accs) + 0.05))
    bx.set_xlabel("final accuracy, with each rung's TTA")
    f.tight_layout()
    f.savefig(figures / "ablation_ladder.png", dpi=150)
    plt.close(f)


def format_table(rows) -> str:
    """The runs as a table: accuracy with and without TTA, training minutes (compilation
    apart), compile seconds, training PFLOP, throughput and peak memory."""
    columns = [("run", 18), ("accuracy", 9), ("no TTA", 8), ("train min", 9), ("compile s", 9),
               ("PFLOP", 6), ("img/s", 6), ("GFLOP/s", 7), ("peak GiB", 8)]
    return _cli.format_table(columns, [
        [r["run"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['accuracy_no_tta']:.2f}%",
         f"{r['train_seconds'] / 60:.1f}", f"{r['compile_seconds']:.0f}",
         f"{r['train_pflop']:.3f}", f"{r['images_per_s']:.0f}", f"{r['gflop_per_s']:.0f}",
         f"{r['peak_rss_mib'] / 1024:.1f}"] for r in rows])


