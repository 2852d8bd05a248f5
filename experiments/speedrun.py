"""CIFAR-10 speedrun: the 2024 record recipe to 94%, and the ladder of what each trick buys.

    python -m experiments.speedrun                                  # train on train, report test
    python -m experiments.speedrun --train-split 'train[:45000]' --eval-split 'train[45000:]'
    python -m experiments.speedrun --seeds 0,1                      # mean +- std over seeds
    python -m experiments.speedrun --recipe airbench94              # the earlier recipe (SGD)
    python -m experiments.speedrun --ablate                         # the ladder, short budget
    python -m experiments.speedrun --device-check                   # time it on this device

Two recipes of :mod:`jaxcnn.train.recipes`, each on the registry's net of the same name:
``airbench94_muon`` (the default; Keller Jordan's 2024 record recipe, 94.01% in 8 epochs on an
A100, here 9 epochs: 94.27% mean on held-out data in 19 min per seed on a 2-core CPU) and
``airbench94`` (``--recipe``; the earlier recipe, 94.08% there with 10% more FLOPs and a longer
run). Both run on the one engine
(:func:`jaxcnn.train.fit`: checkpoints in ``<workdir>/seed<k>/``, resumed when present;
progress bars; data parallel over every local device; on a GPU/TPU the uint8 dataset and its
augmentation live on the device).
The compute dtype (``--dtype auto``) is bfloat16 on a GPU/TPU. On a CPU whose oneDNN kernels
multiply bfloat16 natively (AVX512_BF16 or AMX) it is ``bf16-products``: float32 activations,
and convolutions that round their operands to bfloat16 and accumulate and return float32
(``FitConfig.matmul_precision="bfloat16"``, JAX's own setting, entered for the training run
only: the final evaluation and the bundle compute in float32); elsewhere float32. Parameters
and optimizer state are float32 throughout. The ingredients, each with its one-line reason:

* **whitened first layer**: a frozen 2x2 convolution whose 24 filters are the eigenvectors of
  the training patches' covariance (and their negatives), scaled to unit variance, so the first
  trained layer starts from decorrelated inputs (no BatchNorm after it; its bias trains for 3
  epochs, then freezes).
* **identity ("dirac") init**: each 3x3 convolution starts as the identity on its first input
  channels, so the untrained network already passes the whitened signal through.
* **BatchNorm without scale, biases at a large learning rate**: the biases of a normalised
  network move in units of one standard deviation, so they need a much larger step.
* **Muon** for the 3x3 filters (``jaxcnn.train.muon``): the momentum of the gradient is
  orthogonalised (all its singular values set near 1 by 3 Newton-Schulz steps), so every
  direction of a filter bank moves by the same amount, and each bank is kept at a fixed norm;
  Nesterov SGD for the biases and the head; every rate decays linearly to 0 over 9 epochs.
  (``airbench94`` instead: Nesterov SGD everywhere, a triangular rate and **lookahead** every 5
  steps, 10 epochs.)
* **alternating flips**: each image is mirrored in every other epoch instead of at random, so
  two consecutive epochs see both orientations of every image.
* **multi-crop test-time augmentation**: logits averaged over the image, its mirror and 1-pixel
  translations of both (``flip_translate``). The exported bundle applies the same TTA, so its
  predictions reproduce the reported accuracy.
* label smoothing 0.2, 2-pixel reflect-padded random crops, batch 2000 (``airbench94``: 1024).

Each run reports its accuracy with and without TTA, its training time without compilation and
the compilation apart (the held-out split is evaluated after training unless ``--eval-every``
asks for a curve), the training FLOPs as XLA counts them (one step times the steps, and for a
50,000-image run), the TTA evaluation's FLOPs and the peak resident memory
(``experiments/_speedrun_report.py``).

``--ablate`` trains the ladder: from a baseline (learned first layer with BatchNorm, default
init, no bias scaling, random flips, flip TTA) adding one ingredient per rung up to the full
airbench94 recipe, then ``+ Muon`` (airbench94_muon), each on a short budget
(``--ablate-train-size`` images, ``--ablate-epochs`` epochs), and plots held-out accuracy
against epochs for every rung (``<workdir>/figures/ablation_ladder.png``). Each rung
checkpoints in ``<workdir>/ablate/<rung>/`` and resumes; the multi-crop TTA rung, which changes
only the evaluation, evaluates the net the lookahead rung trained.

``--device-check`` needs no dataset: it trains the recipe for ``--epochs`` (default 2) on
random images with the data and its augmentation on the device, and projects the time of a full
run from the median epoch (an upper bound: from epoch 4 the step skips the frozen whitening
layer's gradients and is a few percent cheaper).

Measured accuracies and times, with their commands and machines, are in
``visuals/speedrun/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from experiments import _cli
from experiments._speedrun_report import (
    evaluate_and_export,
    fit_net,
    format_table,
    write_ladder_figure,
)

# The recipes of jaxcnn.train.recipes this lesson trains, each on the registry's net of the same
# name; the first is the default.
RECIPE_NAMES = ("airbench94_muon", "airbench94")

# The ladder: (rung name, what it adds). Each rung keeps everything above it.
RUNGS = (
    ("baseline", "learned first layer + BatchNorm, default init, SGD, flip/translate, flip TTA"),
    ("whitening", "+ frozen whitened first layer (no BatchNorm after it)"),
    ("dirac", "+ identity init of the 3x3 convolutions"),
    ("bias_lr", "+ BatchNorm biases at 64x the learning rate"),
    ("whiten_bias_freeze", "+ first-layer bias frozen after 3 epochs"),
    ("lookahead", "+ lookahead every 5 steps, BatchNorm momentum 0.4"),
    ("multicrop_tta", "+ multi-crop TTA (mirror and 1-pixel translations)"),
    ("alternating_flip", "+ alternating (not random) flips: the full airbench94 recipe"),
    ("muon", "+ Muon for the conv filters, batch 2000, no lookahead: airbench94_muon"),
)
RUNG_NAMES = tuple(name for name, _ in RUNGS)


# --dtype choices. bf16-products: a float32 net whose convolutions round their operands to
# bfloat16 and accumulate and return float32 (FitConfig.matmul_precision="bfloat16").
DTYPES = ("auto", "float32", "bfloat16", "bf16-products")


def build_parser():
    from jaxcnn.evaluate.tta import TTA_MODES, describe_tta_modes

    p = _cli.make_parser("speedrun", __doc__.split("\n")[0])
    _cli.add_common(p, "speedrun", seed=False, data_dir=True)
    _cli.add_cifar10_training(
        p, epochs_help="training epochs (default: the recipe's: 9, or 10 for airbench94)",
        batch_size=None,
        batch_size_help="global batch size (default: the recipe's: 2000, or 1024 for "
                        "airbench94); the learning rates are tuned for it")
    p.add_argument("--recipe", choices=RECIPE_NAMES, default=RECIPE_NAMES[0],
                   help="the training recipe and its net (default airbench94_muon: Muon for "
                        "the filters, 9 epochs at batch 2000, 94.27%% mean on held-out data; "
                        "airbench94: Nesterov SGD with lookahead, 10 epochs at batch 1024, "
                        "94.08%% there with 10%% more FLOPs)")
    p.add_argument("--eval-every", type=_cli.non_negative_int, default=None,
                   help="evaluate the held-out split after every this many epochs (default: "
                        "0 for a full run, which is evaluated after training, as airbench "
                        "times its runs; 1 with --ablate, whose figure plots every epoch)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds; one full run each (in <workdir>/seed<k>), "
                        "reported as mean +- std")
    p.add_argument("--tta", choices=TTA_MODES, default="flip_translate",
                   help="test-time augmentation of the reported accuracy and of the exported "
                        f"bundle's predictions ({describe_tta_modes()})")
    p.add_argument("--widths", type=parse_widths, default=None,
                   help="channels of the three conv groups, e.g. 32,64,64 for a quick try "
                        "(default: airbench94's 64,256,256, which the recipe is tuned for)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="compute dtype; parameters and optimizer state stay float32. "
                        "bf16-products: float32 activations, convolutions that multiply "
                        "bfloat16-rounded operands and accumulate in float32 (oneDNN's "
                        "bfloat16 kernels on a CPU with AVX512_BF16 or AMX). auto: bfloat16 "
                        "on a GPU or TPU; on a CPU bf16-products where oneDNN has those "
                        "kernels, else float32")
    p.add_argument("--eval-batch-size", type=_cli.positive_int, default=1000,
                   help="batch size of evaluation")
    p.add_argument("--device-check", action="store_true",
                   help="time the recipe on synthetic data (random images and labels, kept "
                        "and augmented on the device) on whatever device is present, and "
                        "project the time of a full run; needs no dataset")
    p.add_argument("--check-images", type=_cli.positive_int, default=50_000,
                   help="--device-check: synthetic training images (default 50,000, "
                        "CIFAR-10's training split)")
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
    """``--dtype``: ``auto`` is bfloat16 on a GPU or TPU; on a CPU, ``bf16-products`` where
    oneDNN multiplies bfloat16 natively (AVX512_BF16 or AMX and the onednn extra: 1.4x a step,
    no accuracy lost, ``visuals/speedrun/README.md``), else float32. (``bfloat16`` on such a
    CPU, bfloat16 activations too, lost accuracy.)"""
    import jax

    if dtype != "auto":
        return dtype
    if jax.default_backend() in ("gpu", "tpu"):
        return "bfloat16"
    from jaxcnn.ops import backend, onednn

    fast_bf16 = backend.resolve() == "onednn" and onednn.native_bf16()
    return "bf16-products" if fast_bf16 else "float32"


def dtype_changes(dtype: str) -> dict:
    """The FitConfig fields of a resolved ``--dtype``."""
    if dtype == "bf16-products":
        return dict(dtype="float32", matmul_precision="bfloat16")
    return dict(dtype=dtype)


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


def rung_setup(rung: str, base, muon_base=None):
    """The model options, FitConfig and TTA mode of a ladder rung: the airbench94 recipe
    ``base`` with every ingredient above ``rung`` taken out again; the ``muon`` rung is the
    airbench94_muon recipe ``muon_base`` (on its own net, :func:`rung_model`)."""
    if rung == "muon":
        if muon_base is None:
            raise ValueError("the muon rung needs the airbench94_muon recipe (muon_base)")
        return {}, muon_base, "flip_translate"
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


def rung_model(rung: str) -> str:
    """The registry net a rung trains: airbench94_muon's for the muon rung, else airbench94."""
    return "airbench94_muon" if rung == "muon" else "airbench94"


def base_recipe(args, seed: int, name: str | None = None):
    """The recipe ``name`` (default ``--recipe``) with the run's seed, dtype, ``--eval-every``
    and any ``--epochs`` / ``--batch-size``."""
    from jaxcnn.train import recipes

    config = recipes.get(name or args.recipe)
    eval_every = args.eval_every if args.eval_every is not None else int(args.ablate)
    changes = dict(seed=seed, eval_every=eval_every, **dtype_changes(resolve_dtype(args.dtype)))
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
        trained = fit_net(name, args.recipe, options, config, train, evaluation, args, workdir)
        row, outcomes[name] = evaluate_and_export(name, trained, args.tta, train, evaluation,
                                                  args, workdir)
        row["seed"] = seed
        _cli.update_results(args.workdir / "results.json", f"seed{seed}", row)
        rows.append(row)
        print(f"seed {seed}: {100 * row['accuracy']:.2f}% on {args.eval_split} "
              f"({args.tta} TTA; {100 * row['accuracy_no_tta']:.2f}% without), "
              f"{row['train_seconds']:.0f} s training + {row['compile_seconds']:.0f} s "
              f"compiling, {row['train_pflop_50k']:.3f} PFLOP per 50,000-image run")
    accs = [r["accuracy"] for r in rows]
    summary = {
        "seeds": seeds,
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "recipe": args.recipe,
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rows])),
        "compile_seconds_mean": float(np.mean([r["compile_seconds"] for r in rows])),
        "train_pflop_50k": rows[0]["train_pflop_50k"],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
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
                            title=f"{args.recipe} on CIFAR-10 (eval split dashed)")
        print(f"figures: {figures}/")
    return results


def run_ablation(train, evaluation, args) -> dict:
    from jaxcnn.data import ArrayDataset

    rungs = parse_rungs(args.rungs)
    n = min(args.ablate_train_size, len(train))
    subset = ArrayDataset(train.images[:n], train.labels[:n], train.class_names)
    seed = parse_seeds(args.seeds)[0]
    base = dataclasses.replace(base_recipe(args, seed, "airbench94"), epochs=args.ablate_epochs)
    muon_base = dataclasses.replace(base_recipe(args, seed, "airbench94_muon"),
                                    epochs=args.ablate_epochs)
    _cli.check_batch_size(base.batch_size, n)
    if "muon" in rungs:
        _cli.check_batch_size(muon_base.batch_size, n)
    rows, outcomes, fitted = [], {}, []
    for rung in rungs:
        options, config, tta = rung_setup(rung, base, muon_base)
        options = model_options(config.dtype, args.widths, **options)
        workdir = args.workdir / "ablate" / rung
        print(f"rung {rung}: {dict(RUNGS)[rung]}")
        # A rung that changes only the evaluation (multi-crop TTA) reuses the net trained above.
        trained = next((t for t in fitted if (t.model_name, t.options, t.config)
                        == (rung_model(rung), options, config)), None)
        if trained is None:
            trained = fit_net(rung, rung_model(rung), options, config, subset, evaluation, args,
                              workdir)
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


def synthetic_cifar(n: int, seed: int = 0):
    """``n`` random uint8 32x32x3 images with random labels of CIFAR-10's classes."""
    from jaxcnn.data import ArrayDataset
    from jaxcnn.data.official import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return ArrayDataset(images, rng.integers(0, 10, n).astype(np.int32), CIFAR10_CLASSES)


def run_device_check(args) -> dict:
    """Train the recipe on synthetic data with the dataset and its augmentation on the device,
    for ``--epochs`` (default 2), and project a full run: the recipe's epochs times the median
    steady epoch, plus the compilation."""
    import jax

    seed = parse_seeds(args.seeds)[0]
    config = base_recipe(args, seed)
    epochs = args.epochs or 2
    config = dataclasses.replace(config, epochs=epochs, eval_every=0, data_on_device=True)
    recipe_epochs = base_recipe(argparse.Namespace(**{**vars(args), "epochs": None}),
                                seed).epochs
    train = synthetic_cifar(args.check_images, seed)
    _cli.check_batch_size(config.batch_size, len(train))
    device = jax.devices()[0]
    dtype = resolve_dtype(args.dtype)
    print(f"device check: {args.recipe}, {len(train):,} synthetic images, {epochs} epoch(s) on "
          f"{jax.device_count()} x {device.device_kind} ({device.platform}), {dtype}")
    trained = fit_net("device_check", args.recipe, model_options(config.dtype, args.widths),
                      config, train, None, argparse.Namespace(**{**vars(args), "resume": False}),
                      args.workdir / "device_check")
    history = trained.result.history
    compile_s = float(sum(h.get("compile_seconds", 0.0) for h in history))
    steady = [h["epoch_seconds"] for h in history[1:]] or [
        history[0]["epoch_seconds"] - compile_s]
    per_epoch = float(np.median(steady))
    row = {
        "device": f"{jax.device_count()} x {device.device_kind}",
        "platform": device.platform,
        "recipe": args.recipe,
        "dtype": dtype,
        "images": len(train),
        "epochs_timed": epochs,
        "seconds_per_epoch": per_epoch,
        "images_per_s": float(np.median([h["images_per_s"] for h in history[1:]]
                                        or [history[0]["images_per_s"]])),
        "compile_seconds": compile_s,
        "recipe_epochs": recipe_epochs,
        "projected_train_seconds": recipe_epochs * per_epoch,
    }
    _cli.print_table(_cli.format_table(
        [("device", 24), ("s/epoch", 8), ("img/s", 8), ("compile s", 9), ("full run s", 10)],
        [[row["device"], f"{per_epoch:.2f}", f"{row['images_per_s']:.0f}", f"{compile_s:.1f}",
          f"{row['projected_train_seconds']:.1f}"]]))
    print(f"projected: {recipe_epochs} epochs of {args.recipe} in "
          f"{row['projected_train_seconds']:.1f} s of training (+ {compile_s:.1f} s compiling), "
          "the budget at which it reaches 94% on held-out data")
    return _cli.update_results(args.workdir / "results.json", "device_check", row)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    parse_seeds(args.seeds)
    if args.ablate:
        parse_rungs(args.rungs)
    if args.device_check:
        return run_device_check(args)

    _cli.warn_split_overlap(args.train_split, args.eval_split, _cli.CIFAR10_SPLIT_SIZES)
    train, evaluation = load_data(args)
    print(f"train: {args.train_split} {len(train):,} images; eval: {args.eval_split} "
          f"{len(evaluation):,} images")
    if args.ablate:
        return run_ablation(train, evaluation, args)
    return run_full(train, evaluation, args)


if __name__ == "__main__":
    _cli.run(main)
