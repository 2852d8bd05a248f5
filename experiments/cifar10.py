"""CIFAR-10 head-to-head: an MLP, the 3-block CNN and transfer learning (the project's main job).

    python -m experiments.cifar10                       # mlp, cnn3, lite0_transfer on train / test
    python -m experiments.cifar10 --train-split 'train[:45000]' --eval-split 'train[45000:]'
    python -m experiments.cifar10 --models cnn3 --ensemble 4
    python -m experiments.cifar10 --eval-only           # evaluate saved checkpoints

Each model trains with :func:`jaxcnn.train.fit` (data parallel over every local device,
checkpoints in ``<workdir>/<model>/``, resumed when present), is evaluated on ``--eval-split``,
exported as a bundle to ``<workdir>/<model>/bundle/``, and reported in
``<workdir>/results.json`` and a printed table. With ``--tta`` (default ``flip``) each model
trained here is also evaluated with test-time augmentation (:func:`jaxcnn.evaluate.tta_logits`:
the image and its mirror, logits averaged): ``test_accuracy_tta`` in its own column, while
``test_accuracy`` stays the plain one; its bundle stores the mode, so it predicts like that
column. Figures go to ``<workdir>/figures/``;
``--visuals-dir visuals/cifar10`` rewrites the README's committed ones instead. The train and
eval splits are checked for overlap (a warning: accuracy on training images means little).

Per-model defaults (overridden by the flags) are the recipes of :mod:`jaxcnn.train.recipes`
(``recipes.for_model(name)``, FitConfigs): cnn3 trains with SGD (Nesterov momentum 0.9,
decoupled weight decay 5e-4), a one-cycle learning rate peaking at 0.1, label smoothing 0.1,
random crop (4-pixel reflect padding) and horizontal flips for 30 epochs; the MLP trains with
AdamW and a cosine schedule, without augmentation (it cannot use it: an MLP has no translation
invariance, so shifted images only make its task harder).

Measured accuracies and times, each with its command and machine, are in
``visuals/cifar10/README.md`` and the README's results table.

``lite0_transfer`` is the transfer-learning row: EfficientNet-Lite0 with its ImageNet weights
(``jaxcnn.pretrained``), frozen and in inference mode, sees every image upsampled to
``--transfer-size`` (bilinear, scaled to [-1, 1]); its pooled 1280-d features are computed once
(cached in ``<workdir>/cache/``) and a new Dense head is trained on them (AdamW, cosine) for
``--epochs`` like every other row (30 when not given; ``--transfer-epochs`` overrides it for
this row alone; its learning rate is ``--transfer-lr``, not ``--lr``). Its bundle is an
``efficientnet_lite0`` with 10 classes that predicts from 32x32 uint8 images (resized inside).
``train_seconds`` includes the feature extraction; ``images_per_s`` is the extraction rate.
It gets no TTA column: its evaluation runs the head on features cached from the plain images, not
the image forward that TTA wraps, and its bundle predicts without TTA.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from experiments import _cli

DEFAULT_MODELS = ("mlp", "cnn3", "lite0_transfer")
# Rows that are not trained from scratch: name -> pretrained backbone.
TRANSFER_MODELS = {"lite0_transfer": "efficientnet_lite0"}

TRANSFER_EPOCHS = 30  # lite0_transfer's head, when neither --epochs nor --transfer-epochs is given


def accepted_models() -> list[str]:
    """Every name ``--models`` accepts: the registry's models and the transfer rows."""
    from jaxcnn import models

    return sorted(set(models.available()) | set(TRANSFER_MODELS))


def build_parser():
    from jaxcnn.evaluate.tta import TTA_MODES, describe_tta_modes

    p = _cli.make_parser("cifar10", __doc__.split("\n")[0])
    _cli.add_common(p, "cifar10", data_dir=True)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated model names, any of: " + ", ".join(accepted_models()))
    _cli.add_cifar10_training(
        p, epochs_help="epochs per model, lite0_transfer's head included (default: the "
                       "model's recipe: 30 cnn3, 20 mlp, 30 lite0_transfer)",
        batch_size_help="global batch size, split over all local devices; also the "
                        "lite0_transfer head's batch")
    p.add_argument("--lr", type=_cli.positive_float, default=None,
                   help="peak learning rate of the models trained from scratch (default: the "
                        "recipe's: 0.1 cnn3, 1e-3 mlp; lite0_transfer uses --transfer-lr)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="sgd = Nesterov momentum with decoupled weight decay; adamw (default: "
                        "the recipe's: sgd cnn3, adamw mlp)")
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default=None,
                   help="learning-rate schedule, warm-up included for onecycle and cosine "
                        "(default: the recipe's: onecycle cnn3, cosine mlp)")
    p.add_argument("--weight-decay", type=_cli.non_negative_float, default=None,
                   help="decoupled weight decay, not applied to biases and BatchNorm (default: "
                        "the recipe's: 5e-4 cnn3, 1e-4 mlp)")
    p.add_argument("--label-smoothing", type=_cli.smoothing, default=None,
                   help="label smoothing in [0, 1); 0 disables it (default: the recipe's: "
                        "0.1 cnn3, 0 mlp)")
    p.add_argument("--augment", dest="augment", action="store_true", default=None,
                   help="random crop + horizontal flip on device (default for conv nets)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="train without augmentation")
    p.add_argument("--cutout", dest="cutout_size", type=_cli.non_negative_int, default=None,
                   help="side of a random square zeroed per image during training; 0 is off "
                        "(default: the recipe's, 0)")
    p.add_argument("--ensemble", type=_cli.positive_int, default=1,
                   help="train K models from K seeds at once (vmap); reports mean +- std")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype; parameters and optimizer state stay float32")
    p.add_argument("--transfer-size", type=_cli.positive_int, default=128,
                   help="lite0_transfer: side the 32x32 images are upsampled to (224 is the "
                        "ImageNet size; 128 costs a third of it)")
    p.add_argument("--transfer-epochs", type=_cli.positive_int, default=None,
                   help="lite0_transfer: epochs of the Dense head on the cached features, "
                        f"overriding --epochs for this row (default: --epochs, else "
                        f"{TRANSFER_EPOCHS})")
    p.add_argument("--transfer-lr", type=_cli.positive_float, default=1e-3,
                   help="lite0_transfer: peak AdamW learning rate of the head")
    p.add_argument("--tta", choices=TTA_MODES, default="flip",
                   help="test-time augmentation for the models trained here (not "
                        "lite0_transfer, whose head runs on features cached from the plain "
                        "images): their accuracy with it is an extra column, "
                        "test_accuracy_tta in results.json (test_accuracy stays without TTA), "
                        "and their bundles store it, so a bundle predicts like that column. "
                        f"none: no extra column, bundles without TTA. {describe_tta_modes()}")
    p.add_argument("--eval-batch-size", type=_cli.positive_int, default=500,
                   help="batch size for evaluation")
    p.add_argument("--eval-only", action="store_true",
                   help="do not train: evaluate the last saved checkpoint of each model (the "
                        "final model; 'best' is chosen on the eval split, so reporting it "
                        "would select on the data the accuracy is measured on)")
    return _cli.add_run_flags(p)


def recipe_for(model_name: str, args):
    """The model's recipe (a FitConfig) with every flag the user gave applied on top."""
    from jaxcnn.train import recipes

    return recipes.with_overrides(recipes.for_model(model_name), args)


# (train, eval) ArrayDatasets of --train-split / --eval-split; a module attribute, so that tests
# can hand main() generated data.
load_data = _cli.load_cifar10


def transfer_epochs(args) -> int:
    """Epochs of lite0_transfer's head: --transfer-epochs, else --epochs, else 30."""
    return args.transfer_epochs or args.epochs or TRANSFER_EPOCHS


def train_one(name, config, train, evaluation, args):
    """Fit one model (or ensemble) with its FitConfig; returns (model, model options,
    preprocess, FitResult, seconds)."""
    import jax.numpy as jnp

    from jaxcnn import models
    from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
    from jaxcnn.train import fit

    model_options = {"dtype": jnp.bfloat16} if config.dtype == "bfloat16" else {}
    model = models.create(name, num_classes=train.num_classes, **model_options)
    print(models.summary(model, (1, *train.image_shape)))
    start = time.perf_counter()
    result = fit(model, train, evaluation, config=config, workdir=args.workdir / name,
                 normalization=(CIFAR10_MEAN, CIFAR10_STD), resume=args.resume,
                 progress=args.progress)
    return model, model_options, result.preprocess, result, time.perf_counter() - start


def run_transfer(name, train, evaluation, args):
    """Feature extraction with a frozen pretrained backbone + a new Dense head.

    Returns (row, outcome) like the trained models; the bundle goes to
    ``<workdir>/<name>/bundle/``.
    """
    from jaxcnn import export, models, pretrained, transfer
    from jaxcnn.evaluate import accuracy

    backbone = TRANSFER_MODELS[name]
    size = (args.transfer_size,) * 2
    prep = transfer.backbone_preprocess(backbone, size)
    bundle_dir = args.workdir / name / "bundle"
    if args.eval_only:
        if not bundle_dir.exists():
            raise FileNotFoundError(f"no bundle in {bundle_dir}; train first (drop --eval-only) "
                                    "or pass the --workdir of an earlier run")
        bundle = export.load(bundle_dir)
        probs = bundle.predict(evaluation.images)
        logits = np.log(np.clip(probs, 1e-12, None))
        row = dict(bundle.metrics, test_accuracy=accuracy(logits, evaluation.labels))
        return row, dict(logits=logits, accuracy=row["test_accuracy"], history=[])
    model, variables = pretrained.load(backbone)
    cache = args.workdir / "cache"
    start = time.perf_counter()
    f_train = transfer.extract_features(model, variables, train.images, prep, 64,
                                        cache_dir=cache, name=f"{backbone}-cifar10-train",
                                        progress=args.progress)
    f_eval = transfer.extract_features(model, variables, evaluation.images, prep, 64,
                                       cache_dir=cache, name=f"{backbone}-cifar10-eval",
                                       progress=args.progress)
    extract_s = time.perf_counter() - start
    print(f"{name}: features {f_train.shape} + {f_eval.shape} in {extract_s:.0f} s")
    epochs = transfer_epochs(args)
    start = time.perf_counter()
    head, history = transfer.train_head(
        f_train, train.labels, train.num_classes, val=(f_eval, evaluation.labels),
        epochs=epochs, batch_size=args.batch_size, lr=args.transfer_lr,
        seed=args.seed, workdir=args.workdir / name / "head", resume=args.resume,
        progress=args.progress)
    head_s = time.perf_counter() - start
    logits = np.asarray(transfer.head_logits(head, f_eval))
    variables_k = transfer.with_head(variables, head)
    row = {
        "test_accuracy": accuracy(logits, evaluation.labels),
        "eval_split": args.eval_split,
        "params": models.count_params(variables_k["params"]),
        "trainable_params": int(head["kernel"].size + head["bias"].size),
        "epochs": epochs,
        "train_seconds": extract_s + head_s,
        "feature_seconds": extract_s,
        "head_seconds": head_s,
        "images_per_s": (len(train) + len(evaluation)) / extract_s,
        "input_size": args.transfer_size,
        "recipe": dict(backbone=backbone, frozen=True, head="Dense", optimizer="adamw",
                       lr=args.transfer_lr, epochs=epochs,
                       batch_size=args.batch_size),
    }
    export.save(bundle_dir, model_name=backbone, model_options={}, variables=variables_k,
                class_names=train.class_names,
                preprocessing=dict(input_size=size, mean=prep.mean, std=prep.std),
                metrics={k: v for k, v in row.items() if k != "recipe"})
    return row, dict(logits=logits, accuracy=row["test_accuracy"], history=history)


def member_variables(state, index: int | None):
    """Model variables of a (possibly ensembled) TrainState, or of a restored checkpoint dict,
    as host numpy."""
    import jax

    if isinstance(state, dict):  # a restored checkpoint: plain arrays, no TrainState
        variables = {k: state[k] for k in ("params", "batch_stats") if state.get(k)}
    else:
        variables = state.variables
    if index is not None:
        variables = jax.tree.map(lambda a: a[index], variables)
    return jax.device_get(variables)


def evaluate_members(model, state, evaluation, preprocess, args, ensemble: int,
                     tta: str = "none"):
    """Eval-split logits per ensemble member: list of (N, K) float32 arrays; with ``tta``
    averaged over its views (one batched pass over the split per view)."""
    from jaxcnn.evaluate import predict_logits

    indices = [None] if ensemble == 1 else list(range(ensemble))
    return [
        predict_logits(model.apply, member_variables(state, i), evaluation.images,
                       mean=preprocess.mean, std=preprocess.std,
                       batch_size=args.eval_batch_size, tta=tta)
        for i in indices
    ]


def _accuracy_cell(r: dict, key: str) -> str:
    """``r[key]`` as a percentage, with ``+-`` the ensemble's spread when the row has it."""
    if key not in r:
        return "-"
    if f"{key}_std" in r:
        return f"{100 * r[key]:.2f}+-{100 * r[f'{key}_std']:.2f}%"
    return f"{100 * r[key]:.2f}%"


def format_table(results: dict, names) -> str:
    """The printed summary: one line per model of ``names`` that has a row in ``results``; a
    TTA accuracy column (``-`` for rows without it) when any of them has one."""
    shown = [results[n] for n in names if n in results]
    modes = sorted({r["tta"] for r in shown if "test_accuracy_tta" in r})
    tta_header = f"{modes[0]} TTA" if len(modes) == 1 else "TTA accuracy"
    columns = [("model", 15), ("accuracy", 16)]
    if modes:
        columns.append((tta_header, max(16, len(tta_header))))
    columns += [("params", 11), ("epochs", 6), ("train min", 9), ("img/s", 8)]
    rows = []
    for name in names:
        r = results.get(name)
        if r is None:
            continue
        minutes = r.get("train_seconds", float("nan")) / 60
        cells = [name, _accuracy_cell(r, "test_accuracy")]
        if modes:
            cells.append(_accuracy_cell(r, "test_accuracy_tta"))
        rows.append([*cells, f"{r['params']:,}", f"{r.get('epochs', 0)}", f"{minutes:.1f}",
                     f"{r.get('images_per_s', float('nan')):.0f}"])
    return _cli.format_table(columns, rows)


def write_figures(visuals: Path, train, evaluation, outcomes: dict, args) -> None:
    """All figures of the lesson: data, augmentation, curves, confusion, mistakes, filters."""
    import jax

    from jaxcnn import evaluate
    from jaxcnn.data import augment
    from jaxcnn.viz import results as fig

    names = train.class_names
    visuals.mkdir(parents=True, exist_ok=True)
    fig.sample_grid(train.images[:32], train.labels[:32], names, visuals / "samples.png")
    key = jax.random.key(args.seed)
    counter = iter(range(10**6))

    def augment_fn(batch):
        return np.asarray(augment(jax.random.fold_in(key, next(counter)), batch, crop_pad=4,
                                  flip=True, cutout_size=0))

    fig.augmentation_examples(train.images[:4], augment_fn, visuals / "augmentation.png")
    histories = {n: o["history"] for n, o in outcomes.items() if o.get("history")}
    if histories:
        fig.training_curves(histories, visuals / "training_curves.png",
                            title="CIFAR-10 training curves (eval split dashed)")
    k = train.num_classes
    fig.per_class_accuracy_bars(
        {n: evaluate.per_class_accuracy(o["logits"].argmax(-1), evaluation.labels, k)
         for n, o in outcomes.items()}, names, visuals / "per_class_accuracy.png")
    # The strongest model gets the detailed figures.
    best = max(outcomes, key=lambda n: outcomes[n]["accuracy"])
    logits = outcomes[best]["logits"]
    probs = evaluate.softmax(logits)
    cm = evaluate.confusion_matrix(logits.argmax(-1), evaluation.labels, k)
    fig.confusion_matrix_plot(cm, names, visuals / "confusion_matrix.png",
                              title=f"{best}: confusion matrix on {args.eval_split}")
    fig.prediction_grid(evaluation.images, evaluation.labels, probs, names,
                        visuals / "predictions.png", title=f"{best} predictions "
                        "(green: correct, red: wrong)")
    fig.confident_mistakes(evaluation.images, evaluation.labels, probs, names,
                           visuals / "confident_mistakes.png",
                           title=f"{best}: most confident mistakes")
    for name, o in outcomes.items():
        if o.get("model") is None:
            continue  # a transfer row: its filters are ImageNet's, not learned here
        variables = o["variables"]
        try:
            kernel = evaluate.first_conv_kernel(variables)
        except ValueError:
            continue  # no convolution (the MLP)
        fig.first_layer_filters(kernel, visuals / f"{name}_first_layer_filters.png",
                                title=f"{name}: learned first-layer filters")
        acts = evaluate.conv_activations(o["model"], variables, evaluation.images[:1],
                                         mean=o["preprocess"].mean, std=o["preprocess"].std)
        first = next(iter(acts.values()))[0]
        fig.feature_maps(first, visuals / f"{name}_feature_maps.png",
                         title=f"{name}: first conv layer feature maps",
                         image=evaluation.images[0])


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    from jaxcnn import export, models
    from jaxcnn.evaluate import accuracy, softmax
    from jaxcnn.train import checkpoint

    unknown = [n for n in names if n not in accepted_models()]
    if unknown or not names:
        raise ValueError(f"--models: unknown model(s) {unknown or [args.models]}; available: "
                         f"{', '.join(accepted_models())}")
    _cli.warn_split_overlap(args.train_split, args.eval_split, _cli.CIFAR10_SPLIT_SIZES)
    train, evaluation = load_data(args)
    print(f"train: {args.train_split} {len(train):,} images; eval: {args.eval_split} "
          f"{len(evaluation):,} images")
    if not args.eval_only:
        _cli.check_batch_size(args.batch_size, len(train))
    outcomes, results = {}, {}
    for name in names:
        if name in TRANSFER_MODELS:
            row, outcomes[name] = run_transfer(name, train, evaluation, args)
            results = _cli.update_results(args.workdir / "results.json", name, row)
            print(f"{name}: {100 * row['test_accuracy']:.2f}% on {args.eval_split}")
            continue
        config = recipe_for(name, args)
        if args.eval_only:
            from jaxcnn.data import CIFAR10_MEAN, CIFAR10_STD
            from jaxcnn.train import Preprocess

            restored = checkpoint.restore(args.workdir / name, which="latest")
            if restored is None:
                raise FileNotFoundError(f"no checkpoint in {args.workdir / name}; train first "
                                        "(drop --eval-only) or pass the --workdir of an earlier "
                                        "run")
            state, meta = restored
            model = models.create(name, num_classes=train.num_classes)
            preprocess = Preprocess(mean=CIFAR10_MEAN, std=CIFAR10_STD)
            history, seconds = meta.get("history", []), meta.get("train_seconds", float("nan"))
            ensemble = int(meta.get("config", {}).get("ensemble", 1))
            model_options = {}
        else:
            model, model_options, preprocess, result, seconds = train_one(
                name, config, train, evaluation, args)
            state, history, ensemble = result.state, result.history, args.ensemble
        member_logits = evaluate_members(model, state, evaluation, preprocess, args, ensemble)
        accs = [accuracy(lg, evaluation.labels) for lg in member_logits]
        variables = member_variables(state, None if ensemble == 1 else 0)
        row = {"test_accuracy": float(np.mean(accs))}
        if args.tta != "none":
            tta_accs = [accuracy(lg, evaluation.labels) for lg in
                        evaluate_members(model, state, evaluation, preprocess, args, ensemble,
                                         tta=args.tta)]
            row["test_accuracy_tta"] = float(np.mean(tta_accs))
            if ensemble > 1:
                row["test_accuracy_tta_std"] = float(np.std(tta_accs))
            row["tta"] = args.tta
        row.update({
            "eval_split": args.eval_split,
            "params": models.count_params(variables["params"]),
            **_cli.training_summary(history, config, seconds, args.batch_size),
        })
        if ensemble > 1:
            row["test_accuracy_std"] = float(np.std(accs))
            row["member_accuracies"] = accs
            row["ensemble_size"] = ensemble
            mean_probs = np.mean([softmax(lg) for lg in member_logits], axis=0)
            row["ensemble_accuracy"] = accuracy(mean_probs, evaluation.labels)
        results = _cli.update_results(args.workdir / "results.json", name, row)
        export.save(
            args.workdir / name / "bundle", model_name=name, model_options=model_options,
            variables=variables, class_names=train.class_names,
            preprocessing=dict(input_size=train.image_shape[:2], mean=preprocess.mean,
                               std=preprocess.std),
            metrics={k: v for k, v in row.items() if k != "recipe"},
            tta=args.tta,  # the bundle predicts like the TTA column (plain when --tta none)
        )
        outcomes[name] = dict(logits=member_logits[0], accuracy=accs[0], history=history,
                              variables=variables, model=model, preprocess=preprocess)
        tta_note = (f", {100 * row['test_accuracy_tta']:.2f}% with {args.tta} TTA"
                    if "test_accuracy_tta" in row else "")
        print(f"{name}: {100 * row['test_accuracy']:.2f}% on {args.eval_split}{tta_note}")
    _cli.print_table(format_table(results, names), args.workdir / "results.json")
    if args.figures:
        figures = _cli.figures_dir(args)
        write_figures(figures, train, evaluation, outcomes, args)
        print(f"figures: {figures}/")
    return results


if __name__ == "__main__":
    _cli.run(main)
