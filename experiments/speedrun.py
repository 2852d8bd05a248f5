"""CIFAR-10 speedrun: an airbench-class recipe to 94%, and the ladder of what each trick buys.

    python -m experiments.speedrun                                  # train on train, report test
    python -m experiments.speedrun --train-split 'train[:45000]' --eval-split 'train[45000:]'
    python -m experiments.speedrun --seeds 0,1                      # mean +- std over seeds
    python -m experiments.speedrun --ablate                         # the ladder, short budget

The model is the registry's ``airbench94`` and its training the recipe ``airbench94`` of
:mod:`jaxcnn.train.recipes`, both on the one engine (:func:`jaxcnn.train.fit`: checkpoints in
``<workdir>/seed<k>/``, resumed when present; progress bars; data parallel over every local
device; on a GPU/TPU the uint8 dataset and its augmentation live on the device, and the
compute is bfloat16). The ingredients, each with its one-line reason:

* **whitened first layer**: a frozen 2x2 convolution whose 24 filters are the eigenvectors of
  the training patches' covariance (and their negatives), scaled to unit variance, so the first
  trained layer starts from decorrelated inputs (no BatchNorm after it; its bias trains for 3
  epochs, then freezes).
* **identity ("dirac") init**: each 3x3 convolution starts as the identity on its first input
  channels, so the untrained network already passes the whitened signal through.
* **BatchNorm without scale, biases at 64x the learning rate**: the biases of a normalised
  network move in units of one standard deviation, so they need a much larger step.
* **lookahead** every 5 steps with fast BatchNorm statistics (momentum 0.4 in Flax's
  convention), which smooths the last noisy steps of a short, high-rate run.
* **alternating flips**: each image is mirrored in every other epoch instead of at random, so
  two consecutive epochs see both orientations of every image.
* **multi-crop test-time augmentation**: logits averaged over the image, its mirror and 1-pixel
  translations of both (``flip_translate``). The exported bundle applies the same TTA, so its
  predictions reproduce the reported accuracy.
* Nesterov SGD (momentum 0.85), a triangular learning rate, label smoothing 0.2, batch 1024,
  2-pixel reflect-padded random crops, 10 epochs.

``--ablate`` trains the ladder: from a baseline (learned first layer with BatchNorm, default
init, no bias scaling, random flips, flip TTA) adding one ingredient per rung, each on a short
budget (``--ablate-train-size`` images, ``--ablate-epochs`` epochs), and plots held-out accuracy
against epochs for every rung (``<workdir>/figures/ablation_ladder.png``). Each rung checkpoints in
``<workdir>/ablate/<rung>/`` and resumes; the multi-crop TTA rung, which changes only the
evaluation, evaluates the net the lookahead rung trained.

Measured accuracies and times, with their commands and machines, are in
``visuals/speedrun/README.md``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from experiments import _cli

# The ladder: (rung name, what it adds). Each rung keeps everything above it.
RUNGS = (
    ("baseline", "learned first layer + BatchNorm, default init, SGD, flip/translate, flip TTA"),
    ("whitening", "+ frozen whitened first layer (no BatchNorm after it)"),
    ("dirac", "+ identity init of the 3x3 convolutions"),
    ("bias_lr", "+ BatchNorm biases at 64x the learning rate"),
    ("whiten_bias_freeze", "+ first-layer bias frozen after 3 epochs"),
    ("lookahead", "+ lookahead every 5 steps, BatchNorm momentum 0.4"),
    ("multicrop_tta", "+ multi-crop TTA (mirror and 1-pixel translations)"),
    ("alternating_flip", "+ alternating (not random) flips: the full recipe"),
)
RUNG_NAMES = tuple(name for name, _ in RUNGS)


def build_parser():
    from jaxcnn.evaluate.tta import TTA_MODES, describe_tta_modes

    p = _cli.make_parser("speedrun", __doc__.split("\n")[0])
    _cli.add_common(p, "speedrun", seed=False, data_dir=True)
    _cli.add_cifar10_training(
        p, epochs_help="training epochs (default: the recipe's, 10)", batch_size=None,
        batch_size_help="global batch size (default: the recipe's, 1024); the learning rates "
                        "are tuned for it")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds; one full run each (in <workdir>/seed<k>), "
                        "reported as mean +- std")
    p.add_argument("--tta", choices=TTA_MODES, default="flip_translate",
                   help="test-time augmentation of the reported accuracy and of the exported "
                        f"bundle's predictions ({describe_tta_modes()})")
    p.add_argument("--widths", type=parse_widths, default=None,
                   help="channels of the three conv groups, e.g. 32,64,64 for a quick try "
                        "(default: airbench94's 64,256,256, which the recipe is tuned for)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="compute dtype (auto: bfloat16 on a GPU or TPU, float32 on a CPU)")
    p.add_argument("--eval-batch-size", type=_cli.positive_int, default=1000,
                   help="batch size of evaluation")
    p.add_argument("--ablate", action="store_true",
                   help="train the ablation ladder instead of the full run")
    p.add_argument("--rungs", default=",".join(RUNG_NAMES),
                   help="--ablate: comma-separated subset of the rungs, in ladder order: "
                        + ", ".join(RUNG_NAMES))
    p.add_argument("--ablate-train-size", type=_cli.positive_int, default=10_000,
                   help="--ablate: training images per rung (the first N of --train-split)")
    p.add_argument("--ablate-epochs", type=_cli.positive_int, default=8,
                   help="--ablate: epochs per rung")
    return _cli.add_run_flags(p)


# (train, eval) ArrayDatasets of --train-split / --eval-split (a module attribute: tests hand
# main() generated data through it).
load_data = _cli.load_cifar10


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct integers >= 0 separated by commas, got "
                         f"{text!r}")
    return seeds


def parse_rungs(text: str) -> list[str]:
    rungs = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in rungs if r not in RUNG_NAMES]
    if bad or not rungs:
        raise ValueError(f"--rungs: unknown rung(s) {bad or [text]}; choose from "
                         f"{', '.join(RUNG_NAMES)}")
    return sorted(rungs, key=RUNG_NAMES.index)


def resolve_dtype(dtype: str) -> str:
    import jax

    if dtype != "auto":
        return dtype
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"


def parse_widths(text: str) -> tuple[int, int, int]:
    """``"64,256,256"`` -> ``(64, 256, 256)``: three positive ints (argparse type)."""
    import argparse

    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 64,256,256, "
                                         f"got {text!r}")
    return widths


def model_options(dtype: str, widths=None, **options) -> dict:
    """``jaxcnn.models.create`` options of airbench94: ``options``, plus ``widths`` when given
    and the compute dtype."""
    import jax.numpy as jnp

    if widths is not None:
        options["widths"] = tuple(widths)
    return dict(options, dtype=jnp.bfloat16) if dtype == "bfloat16" else dict(options)


def rung_setup(rung: str, base):
    """The model options, FitConfig and TTA mode of a ladder rung: the full recipe ``base``
    with every ingredient above ``rung`` taken out again."""
    level = RUNG_NAMES.index(rung)
    has = {name: level >= RUNG_NAMES.index(name) for name in RUNG_NAMES}
    options = dict(whiten_bn=not has["whitening"], dirac=has["dirac"],
                   bn_momentum=0.4 if has["lookahead"] else 0.9)
    # The recipe's own parameter groups, each kept only from the rung that adds it.
    owner = {"^whiten/kernel": "whitening", "^whiten/bias": "whiten_bias_freeze",
             "norm": "bias_lr"}
    groups = tuple(g for g in base.param_groups if has[owner[g.match]])
    config = dataclasses.replace(
        base, param_groups=groups,
        init_fn=base.init_fn if has["whitening"] else None,
        lookahead_every=base.lookahead_every if has["lookahead"] else 0,
        flip="alternate" if has["alternating_flip"] else True)
    tta = "flip_translate" if has["multicrop_tta"] else "flip"
    return options, config, tta


def train_flops_per_image(model, variables, image_shape) -> float:
    """FLOPs of one training image: 3x the forward pass (forward, input and weight gradients),
    as XLA counts the forward."""
    from jaxcnn.flops import forward_flops

    return 3.0 * forward_flops(model, variables, (1, *image_shape))


@dataclasses.dataclass(frozen=True)
class Trained:
    """One fitted airbench94: what ``evaluate_and_export`` needs, and who trained it."""

    name: str
    model: object
    options: dict
    config: object
    result: object  # jaxcnn.train.FitResult


def fit_airbench(name: str, options: dict, config, train, evaluation, args,
                 workdir) -> Trained:
    """Fit ``airbench94(**options)`` with ``config`` (checkpoints in ``workdir``, resumed
    unless ``--no-resume``)."""
    from jaxcnn import models
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.train import fit

    model = models.create("airbench94", num_classes=train.num_classes, **options)
    result = fit(model, train, evaluation, config=config, workdir=workdir,
                 normalization=(CIFAR10_MEAN, CIFAR10_STD), resume=args.resume,
                 progress=args.progress)
    return Trained(name, model, options, config, result)


def evaluate_and_export(name: str, trained: Trained, tta: str, train, evaluation, args,
                        workdir) -> tuple[dict, dict]:
    """Evaluate a fitted model with ``tta``, export its bundle to ``workdir/bundle``; returns
    (row, outcome)."""
    from jaxcnn import export, models
    from jaxcnn.evaluate import accuracy, predict_logits

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
    # Epoch 1 includes compilation: the steady rate is the median of the others.
    steady = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    img_s = float(np.median(steady)) if steady else float("nan")
    flops = train_flops_per_image(model, variables, train.image_shape)
    row = {
        "run": name,
        "accuracy": accuracy(logits, evaluation.labels),
        "accuracy_no_tta": accuracy(plain, evaluation.labels),
        "tta": tta,
        "eval_split": args.eval_split,
        "n_train": len(train),
        "epochs": config.epochs,
        # The epochs' wall time from the history (compilation in epoch 1, each epoch's
        # held-out evaluation included), so a resumed run reports its whole training.
        "train_seconds": float(sum(h["epoch_seconds"] for h in history)),
        "eval_seconds": eval_s,
        "seconds_per_epoch": float(np.median([h["epoch_seconds"] for h in history[1:]]))
        if len(history) > 1 else float("nan"),
        "images_per_s": img_s,
        "train_gflop_per_image": flops / 1e9,
        "gflop_per_s": img_s * flops / 1e9,
        "params": models.count_params(variables["params"]),
        "model_options": {k: v for k, v in trained.options.items() if k != "dtype"},
        "recipe": config.to_dict(),
        "history": [h["eval_accuracy"] for h in history],
    }
    if trained.name != name:
        row["trained_as"] = trained.name  # the same training as that run, another TTA
    export.save(workdir / "bundle", model_name="airbench94", model_options=trained.options,
                variables=variables, class_names=train.class_names,
                preprocessing=dict(input_size=train.image_shape[:2], mean=prep.mean,
                                   std=prep.std),
                metrics={k: v for k, v in row.items() if k not in ("recipe", "history")},
                tta=tta)
    return row, dict(history=history, logits=logits)


def base_recipe(args, seed: int):
    from jaxcnn.train import recipes

    config = recipes.get("airbench94")
    changes = dict(seed=seed, dtype=resolve_dtype(args.dtype))
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    return dataclasses.replace(config, **changes)


def run_full(train, evaluation, args) -> dict:
    seeds = parse_seeds(args.seeds)
    rows, outcomes = [], {}
    for seed in seeds:
        config = base_recipe(args, seed)
        _cli.check_batch_size(config.batch_size, len(train))
        options = model_options(config.dtype, args.widths)
        name, workdir = f"seed{seed}", args.workdir / f"seed{seed}"
        trained = fit_airbench(name, options, config, train, evaluation, args, workdir)
        row, outcomes[name] = evaluate_and_export(name, trained, args.tta, train, evaluation,
                                                  args, workdir)
        row["seed"] = seed
        _cli.update_results(args.workdir / "results.json", f"seed{seed}", row)
        rows.append(row)
        print(f"seed {seed}: {100 * row['accuracy']:.2f}% on {args.eval_split} "
              f"({args.tta} TTA; {100 * row['accuracy_no_tta']:.2f}% without), "
              f"{row['train_seconds']:.0f} s")
    accs = [r["accuracy"] for r in rows]
    summary = {
        "seeds": seeds,
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rows])),
        "eval_split": args.eval_split,
        "tta": args.tta,
    }
    results = _cli.update_results(args.workdir / "results.json", "summary", summary)
    _cli.print_table(format_table(rows))
    print(f"\n{len(rows)} seed(s): {100 * summary['accuracy_mean']:.2f}% "
          f"+- {100 * summary['accuracy_std']:.2f} on {args.eval_split}")
    if args.figures:
        from jaxcnn.viz import results as fig

        figures = _cli.figures_dir(args)
        figures.mkdir(parents=True, exist_ok=True)
        fig.training_curves({k: o["history"] for k, o in outcomes.items()},
                            figures / "training_curves.png",
                            title="airbench94 on CIFAR-10 (eval split dashed)")
        print(f"figures: {figures}/")
    return results


def run_ablation(train, evaluation, args) -> dict:
    from jaxcnn.data import ArrayDataset

    rungs = parse_rungs(args.rungs)
    n = min(args.ablate_train_size, len(train))
    subset = ArrayDataset(train.images[:n], train.labels[:n], train.class_names)
    seed = parse_seeds(args.seeds)[0]
    base = dataclasses.replace(base_recipe(args, seed), epochs=args.ablate_epochs)
    _cli.check_batch_size(base.batch_size, n)
    rows, outcomes, fitted = [], {}, []
    for rung in rungs:
        options, config, tta = rung_setup(rung, base)
        options = model_options(config.dtype, args.widths, **options)
        workdir = args.workdir / "ablate" / rung
        print(f"rung {rung}: {dict(RUNGS)[rung]}")
        # A rung that changes only the evaluation (multi-crop TTA) reuses the net trained above.
        trained = next((t for t in fitted if (t.options, t.config) == (options, config)), None)
        if trained is None:
            trained = fit_airbench(rung, options, config, subset, evaluation, args, workdir)
            fitted.append(trained)
        else:
            print(f"rung {rung}: the same training as rung {trained.name}, evaluated with "
                  f"{tta} TTA")
        row, outcomes[rung] = evaluate_and_export(rung, trained, tta, subset, evaluation, args,
                                                  workdir)
        _cli.update_results(args.workdir / "results.json", f"ablate/{rung}", row)
        rows.append(row)
        print(f"rung {rung}: {100 * row['accuracy']:.2f}% ({tta} TTA)")
    _cli.print_table(format_table(rows))
    if args.figures:
        figures = _cli.figures_dir(args)
        write_ladder_figure(figures, rows, outcomes, n, args)
        print(f"figures: {figures}/")
    return _cli.update_results(args.workdir / "results.json", "ablate/summary",
                               {r["run"]: r["accuracy"] for r in rows})


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
    columns = [("run", 20), ("accuracy", 9), ("no TTA", 8), ("min", 6), ("s/epoch", 8),
               ("img/s", 7), ("GFLOP/s", 8)]
    return _cli.format_table(columns, [
        [r["run"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['accuracy_no_tta']:.2f}%",
         f"{r['train_seconds'] / 60:.1f}", f"{r['seconds_per_epoch']:.1f}",
         f"{r['images_per_s']:.0f}", f"{r['gflop_per_s']:.0f}"] for r in rows])


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    parse_seeds(args.seeds)
    if args.ablate:
        parse_rungs(args.rungs)

    _cli.warn_split_overlap(args.train_split, args.eval_split, _cli.CIFAR10_SPLIT_SIZES)
    train, evaluation = load_data(args)
    print(f"train: {args.train_split} {len(train):,} images; eval: {args.eval_split} "
          f"{len(evaluation):,} images")
    if args.ablate:
        return run_ablation(train, evaluation, args)
    return run_full(train, evaluation, args)


if __name__ == "__main__":
    _cli.run(main)
