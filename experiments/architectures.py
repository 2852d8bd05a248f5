"""Classic CNN architectures side by side on CIFAR-10, and the plain-vs-residual lesson.

    python -m experiments.architectures                          # lenet5, alexnet_mini, vgg_mini,
                                                                 #   resnet20: the table
    python -m experiments.architectures --eval-split 'train[45000:]' --train-split 'train[:45000]'
    python -m experiments.architectures --lesson vanishing       # plain20/56 vs resnet20/56
    python -m experiments.architectures --lesson gradients       # grad norms at init only (fast)
    python -m experiments.architectures --lesson figures         # timeline + block diagram only

``--lesson compare`` (the default) trains every model of ``--models`` with the same budget
(``--epochs``, the same optimiser family, schedule, augmentation and batch size; only the peak
learning rate is per model, see ``RECIPES``) and prints a table: parameters, FLOPs per image
(XLA's cost analysis of a batch-1 inference forward pass, 2 FLOPs per multiply-add), held-out
accuracy and training images/s. Every model sees RGB 32x32 images: LeNet-5's convolutions take
any number of input channels, so it runs on colour (62,006 params instead of the 61,706 of the
1998 grayscale layout).

``--lesson vanishing`` trains plain20, resnet20, plain56 and resnet56 (He et al. 2016, figure 1
and 6) and records the gradient norm of every conv kernel, in depth order, on one fixed batch
(train mode, BatchNorm with batch statistics, cross-entropy) at initialisation and after the
first epoch. The paper's result to look for: plain56 trains worse than plain20 (higher training
error, not overfitting), resnet56 trains better than resnet20.

``--zero-init-residual`` starts the last BatchNorm scale of every residual block at 0 (Goyal et
al. 2017), so each block is the identity at init; the plain nets cannot use it and are
unchanged.

Defaults: ``--epochs 6`` for compare, 4 for vanishing. Results go to ``<workdir>/results.json``
(one entry per model; ``<workdir>/vanishing/results.json`` for the lesson), checkpoints to
``<workdir>/<model>/`` (resumed when present), figures to ``<workdir>/figures/``
(``--visuals-dir visuals/architectures`` rewrites the README's committed ones instead).

Measured tables, gradient norms and training speeds, each with its command and machine, are in
``visuals/architectures/README.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from experiments import _cli
from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
from jaxcnn.evaluate import accuracy, conv_grad_norms, predict_logits
from jaxcnn.train import FitConfig, recipes

DEFAULT_MODELS = ("lenet5", "alexnet_mini", "vgg_mini", "resnet20")
VANISHING_MODELS = ("plain20", "resnet20", "plain56", "resnet56")
LESSONS = ("compare", "vanishing", "gradients", "figures")

# The shared recipe: SGD with Nesterov momentum, one-cycle schedule, crop + flip augmentation.
# Only the peak learning rate differs: AlexNet-mini has no BatchNorm (and 2M params in dense
# layers), LeNet-5's tanh saturates at large steps; the BN nets take the usual 0.1 (VGG 0.05).
COMMON = FitConfig(optimizer="sgd", schedule="onecycle", weight_decay=5e-4, label_smoothing=0.0,
                   augment=True, cutout_size=0)
RECIPES: dict[str, FitConfig] = {
    "lenet5": dataclasses.replace(COMMON, lr=0.05),
    "alexnet_mini": dataclasses.replace(COMMON, lr=0.02),
    "vgg_mini": dataclasses.replace(COMMON, lr=0.05),
    "resnet20": dataclasses.replace(COMMON, lr=0.1),
}
# The paper's CIFAR recipe for the plain/residual study (weight decay 1e-4, lr 0.1).
VANISHING_RECIPE = dataclasses.replace(COMMON, lr=0.1, weight_decay=1e-4)
GENERIC_RECIPE = dataclasses.replace(COMMON, lr=0.05)

DEFAULT_EPOCHS = {"compare": 6, "vanishing": 4}


def build_parser():
    from jaxcnn import models

    p = _cli.make_parser("architectures", __doc__.split("\n")[0])
    _cli.add_common(p, "architectures", data_dir=True)
    p.add_argument("--lesson", choices=LESSONS, default="compare",
                   help="compare: train --models and print the table; vanishing: plain vs "
                        "residual nets (curves + gradient norms); gradients: gradient norms at "
                        "init only (no training); figures: timeline and block diagram only")
    p.add_argument("--models", default=None,
                   help="comma-separated model names, any of: "
                        f"{', '.join(models.available())} (default: "
                        f"{','.join(DEFAULT_MODELS)} for compare; {','.join(VANISHING_MODELS)} "
                        "otherwise)")
    _cli.add_cifar10_training(
        p, epochs_help="epochs per model, the same for all (default: "
                       f"{DEFAULT_EPOCHS['compare']} compare, {DEFAULT_EPOCHS['vanishing']} "
                       "vanishing)")
    p.add_argument("--limit-train", type=_cli.positive_int, default=None,
                   help="use only the first N images of the train split (smoke runs)")
    p.add_argument("--limit-eval", type=_cli.positive_int, default=None,
                   help="use only the first N images of the eval split (smoke runs)")
    p.add_argument("--lr", type=_cli.positive_float, default=None,
                   help="peak learning rate for every model (default: per model: "
                        + ", ".join(f"{n} {r.lr:g}" for n, r in RECIPES.items())
                        + f", others {GENERIC_RECIPE.lr:g}; {VANISHING_RECIPE.lr:g} in "
                        "the vanishing lesson)")
    p.add_argument("--zero-init-residual", action="store_true",
                   help="start the last BatchNorm scale of every residual block at 0 (Goyal et al. "
                        "2017), so each block is the identity at init; residual nets only, the "
                        "plain nets are unchanged")
    p.add_argument("--grad-batch", type=_cli.positive_int, default=128,
                   help="images in the fixed batch the per-layer gradient norms are taken on "
                        "(the first N of the train split)")
    p.add_argument("--eval-batch-size", type=_cli.positive_int, default=500,
                   help="batch size for evaluation (capped at the eval set's size)")
    return _cli.add_run_flags(p)


# --------------------------------------------------------------------------------------------
# Table

def format_table(results: dict, names) -> str:
    """The printed summary: one line per model of ``names`` that has a row in ``results``."""
    columns = [("model", 13), ("params", 10), ("MFLOPs/img", 10), ("accuracy", 9),
               ("epochs", 6), ("train min", 9), ("img/s", 7)]
    rows = []
    for name in names:
        r = results.get(name)
        if r is None:
            continue
        acc = r.get("test_accuracy")
        rows.append([
            name, f"{r['params']:,}", f"{r['flops_per_image'] / 1e6:.1f}",
            f"{100 * acc:.2f}%" if acc is not None else "-", f"{r.get('epochs', 0)}",
            f"{r.get('train_seconds', float('nan')) / 60:.1f}",
            f"{r.get('images_per_s', float('nan')):.0f}",
        ])
    return _cli.format_table(columns, rows)


# --------------------------------------------------------------------------------------------
# Data and training


def init_variables(model, image_shape, seed: int):
    import jax
    import jax.numpy as jnp

    # Jitted: an eager init of a 56-layer net dispatches (and compiles) op by op.
    init = jax.jit(lambda key, x: model.init(key, x, train=False))
    return init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32))


def fit_model(name, model, config, train, evaluation, args, workdir, stop_after_epoch=None):
    from jaxcnn.train import fit

    return fit(model, train, evaluation, config=config, workdir=workdir,
               normalization=(CIFAR10_MEAN, CIFAR10_STD), resume=args.resume,
               progress=args.progress, stop_after_epoch=stop_after_epoch)


def state_variables(state) -> dict:
    import jax

    return jax.device_get(state.variables)


def model_options(name: str, args) -> dict:
    """``jaxcnn.models.create`` options for ``name`` from the flags: ``zero_init_residual`` for
    the models that have it (the residual nets) when ``--zero-init-residual`` is given."""
    from jaxcnn import models

    wanted = {"zero_init_residual": True} if args.zero_init_residual else {}
    return models.supported_options(name, wanted)


def recipe_for(name: str, args, lesson: str) -> FitConfig:
    """The lesson's FitConfig for ``name`` (its budget of epochs), flags applied on top."""
    base = VANISHING_RECIPE if lesson == "vanishing" else RECIPES.get(name, GENERIC_RECIPE)
    base = dataclasses.replace(base, epochs=DEFAULT_EPOCHS[lesson])
    return recipes.with_overrides(base, args)


# --------------------------------------------------------------------------------------------
# Lessons


def write_static_figures(visuals: Path) -> list[Path]:
    from jaxcnn.viz import architectures as fig

    return [fig.timeline(visuals / "timeline.png"),
            fig.residual_block_diagram(visuals / "residual_block.png")]


def run_compare(names, args) -> dict:
    from jaxcnn import models
    from jaxcnn.flops import forward_flops

    train, evaluation = _cli.load_cifar10(args)
    print(f"train: {args.train_split} {len(train):,} images; eval: {args.eval_split} "
          f"{len(evaluation):,} images")
    _cli.check_batch_size(args.batch_size, len(train))
    results_path = args.workdir / "results.json"
    results, histories = {}, {}
    for name in names:
        recipe = recipe_for(name, args, "compare")
        model = models.create(name, num_classes=train.num_classes, **model_options(name, args))
        print(models.summary(model, (1, *train.image_shape)))
        start = time.perf_counter()
        result = fit_model(name, model, recipe, train, evaluation, args, args.workdir / name)
        seconds = time.perf_counter() - start
        variables = state_variables(result.state)
        logits = predict_logits(model.apply, variables, evaluation.images,
                                mean=CIFAR10_MEAN, std=CIFAR10_STD,
                                batch_size=min(args.eval_batch_size, len(evaluation)))
        history = result.history
        row = {
            "test_accuracy": accuracy(logits, evaluation.labels),
            "eval_split": args.eval_split,
            "train_split": args.train_split,
            "train_images": len(train),
            "params": models.count_params(variables["params"]),
            "flops_per_image": forward_flops(model, variables, (1, *train.image_shape)),
            **_cli.training_summary(history, recipe, seconds, args.batch_size),
        }
        results = _cli.update_results(results_path, name, row)
        histories[name] = history
        print(f"{name}: {100 * row['test_accuracy']:.2f}% on {args.eval_split}")
    _cli.print_table(format_table(results, names), results_path)
    if args.figures:
        from jaxcnn.viz import results as rfig

        figures = _cli.figures_dir(args)
        paths = write_static_figures(figures)
        if histories:
            paths.append(rfig.training_curves(
                histories, figures / "compare_training_curves.png",
                title="CIFAR-10: LeNet-5 -> AlexNet -> VGG -> ResNet (eval split dashed)"))
        print("figures: " + ", ".join(str(p) for p in paths))
    return results


def grad_batch(train, args):
    """The fixed batch the gradient norms are taken on: the first --grad-batch train images,
    normalised ``(n, H, W, C)``, and their labels ``(n,)``.

    Normalised on the host as ``(x / 255 - mean) / std``, as when the measured norms in
    visuals/architectures/README.md were taken: plain56's norms amplify last-bit differences
    of its input (the training pipeline's multiply-add form moves them by about 2%)."""
    n = min(args.grad_batch, len(train))
    x = np.asarray(train.images[:n], np.float32) / 255.0
    x = (x - np.asarray(CIFAR10_MEAN, np.float32)) / np.asarray(CIFAR10_STD, np.float32)
    return x, train.labels[:n]


def gradient_norms_at_init(names, train, args) -> dict[str, list[tuple[str, float]]]:
    """{model: [(conv name, grad norm), ...]} on the first --grad-batch train images."""
    from jaxcnn import models

    x, y = grad_batch(train, args)
    out = {}
    for name in names:
        model = models.create(name, num_classes=train.num_classes, **model_options(name, args))
        variables = init_variables(model, train.image_shape, args.seed)
        out[name] = conv_grad_norms(model, variables, x, y, seed=args.seed)
    return out


def write_gradient_figure(norms: dict, path: Path, batch: int, title_extra: str = ""):
    from jaxcnn.viz.architectures import gradient_norms_plot

    curves = {label: [v for _, v in layers] for label, layers in norms.items()}
    return gradient_norms_plot(
        curves, path,
        title="Gradient norm of each conv kernel, plain vs residual" + title_extra,
        note=f"One fixed batch of {batch} CIFAR-10 training images, train-mode BatchNorm, "
             "cross-entropy; He-normal init, seed fixed. Layer 1 is the stem conv.")


def epoch1_grad_norms(name, model, recipe, train, evaluation, args, run_dir, x, y):
    """Per-conv gradient norms after the first epoch: train one epoch (``fit`` resumes), take
    the norms, and keep them in ``run_dir/grad_norms_epoch1.json``. A resumed run whose
    checkpoint is already past epoch 1 reads them back instead of measuring a later state."""
    path = run_dir / "grad_norms_epoch1.json"
    if args.resume and path.exists():
        return [tuple(pair) for pair in json.loads(path.read_text())]
    first = fit_model(name, model, recipe, train, evaluation, args, run_dir, stop_after_epoch=1)
    norms = conv_grad_norms(model, state_variables(first.state), x, y, seed=args.seed)
    _cli.write_json(path, norms)
    return norms


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is 0 (a zero-initialised residual branch gets no gradient at init)."""
    return a / b if b else None


def summarise_norms(norms: dict) -> dict:
    return {name: {"first": layers[0][1], "last": layers[-1][1],
                   "first_over_last": _ratio(layers[0][1], layers[-1][1]),
                   "per_layer": {k: v for k, v in layers}}
            for name, layers in norms.items()}


def run_gradients(names, args) -> dict:
    train, _ = _cli.load_cifar10(args, need_eval=False)
    norms = gradient_norms_at_init(names, train, args)
    batch = min(args.grad_batch, len(train))
    for name, layers in norms.items():
        ratio = _ratio(layers[0][1], layers[-1][1])
        print(f"{name:<9} {len(layers)} convs; grad norm first conv {layers[0][1]:.4g}, "
              f"last conv {layers[-1][1]:.4g} (first/last "
              f"{'-' if ratio is None else format(ratio, '.3g')})")
    summary = summarise_norms(norms)
    _cli.write_json(args.workdir / "gradient_norms_init.json",
                    {"batch": batch, "seed": args.seed, "models": summary})
    if args.figures:
        p = write_gradient_figure({f"{n}, at init": v for n, v in norms.items()},
                                  _cli.figures_dir(args) / "gradient_norms_init.png", batch,
                                  " (at initialisation)")
        print(f"figure: {p}")
    return summary


def run_vanishing(names, args) -> dict:
    from jaxcnn import models

    train, evaluation = _cli.load_cifar10(args)
    _cli.check_batch_size(args.batch_size, len(train))
    x, y = grad_batch(train, args)
    batch = len(y)
    workdir = args.workdir / "vanishing"
    results, histories, norm_curves = {}, {}, {}
    for name in names:
        recipe = recipe_for(name, args, "vanishing")
        options = model_options(name, args)
        model = models.create(name, num_classes=train.num_classes, **options)
        init = init_variables(model, train.image_shape, args.seed)
        at_init = conv_grad_norms(model, init, x, y, seed=args.seed)
        start = time.perf_counter()
        after1 = epoch1_grad_norms(name, model, recipe, train, evaluation, args,
                                   workdir / name, x, y)
        result = fit_model(name, model, recipe, train, evaluation, args, workdir / name)
        seconds = time.perf_counter() - start
        history = result.history
        final = history[-1] if history else {}
        row = {
            "train_accuracy": final.get("train_accuracy"),
            "train_loss": final.get("train_loss"),
            "eval_accuracy": final.get("eval_accuracy"),
            "eval_split": args.eval_split,
            "params": models.count_params(init["params"]),
            "epochs": len(history),
            "train_seconds": seconds,
            "grad_norms_init": summarise_norms({name: at_init})[name],
            "grad_norms_epoch1": summarise_norms({name: after1})[name],
            "grad_batch": batch,
            "recipe": recipe.to_dict(),
            "model_options": options,
        }
        results = _cli.update_results(workdir / "results.json", name, row)
        histories[name] = history
        norm_curves[f"{name}, at init"] = at_init
        norm_curves[f"{name}, after epoch 1"] = after1
        print(f"{name}: train acc {row['train_accuracy']}, eval acc {row['eval_accuracy']}; "
              f"first-conv grad norm init {at_init[0][1]:.4g}, epoch 1 {after1[0][1]:.4g}")
    print()
    for name in names:
        r = results[name]
        print(f"{name:<9} train loss {r['train_loss']:.4f}  train acc "
              f"{100 * r['train_accuracy']:.2f}%  eval acc {100 * (r['eval_accuracy'] or 0):.2f}%")
    if args.figures:
        from jaxcnn.viz import results as rfig

        figures = _cli.figures_dir(args)
        paths = [
            rfig.training_curves(histories, figures / "vanishing_training_curves.png",
                                 title="Plain vs residual: 20 and 56 layers (eval dashed)"),
            write_gradient_figure(norm_curves, figures / "gradient_norms.png", batch),
        ]
        print("figures: " + ", ".join(str(p) for p in paths))
    return results


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from jaxcnn import models

    default = DEFAULT_MODELS if args.lesson == "compare" else VANISHING_MODELS
    names = ([n.strip() for n in args.models.split(",") if n.strip()] if args.models
             else list(default))
    unknown = [n for n in names if n not in models.available()]
    if unknown or not names:
        raise ValueError(f"--models: unknown model(s) {unknown or [args.models]}; available: "
                         f"{', '.join(models.available())}")
    if args.lesson == "figures":
        paths = write_static_figures(_cli.figures_dir(args))
        print("figures: " + ", ".join(str(p) for p in paths))
        return {"figures": [str(p) for p in paths]}
    if args.lesson != "gradients":
        _cli.warn_split_overlap(args.train_split, args.eval_split, _cli.CIFAR10_SPLIT_SIZES)
    if args.lesson == "gradients":
        return run_gradients(names, args)
    if args.lesson == "vanishing":
        return run_vanishing(names, args)
    return run_compare(names, args)


if __name__ == "__main__":
    _cli.run(main)
