"""Flowers (5 classes): from scratch vs feature extraction vs fine-tuning a pretrained network.

    python -m experiments.flowers --data-dir ../shared/data/flowers --modes feature_extraction
    python -m experiments.flowers --data-dir ../shared/data/flowers            # all three modes

Modes:

* ``scratch``: a registry CNN (default cnn3 at 64x64, 30 epochs) trained from random weights with
  :func:`jaxcnn.train.fit` (random crop + flip on device).
* ``feature_extraction``: EfficientNet-Lite0 with its ImageNet weights, frozen and in inference
  mode; its pooled 1280-d features are computed once (cached in ``<workdir>/cache/``) and a new
  Dense head is trained on them.
* ``fine_tuning``: two-phase: the head of ``feature_extraction`` (phase 1), then the top
  ``--trainable-blocks`` modules trained with the head at ``--fine-tune-lr`` with BatchNorm
  statistics frozen (see :mod:`jaxcnn.transfer` for why).

The data is an image folder (``--data-dir``: ``PATH/<class>/*.jpg``) or, without it, TFDS
``tf_flowers`` (needs the prepared dataset or a network). A stratified ``--val-fraction`` of
the images is held out (:func:`jaxcnn.data.splits.stratified_split` with ``--seed``) and never
trained on; accuracies are on it. An image that fails to decode (truncated JPEGs included) is
named with the reason and left out. Every training writes checkpoints and ``metrics.jsonl``
(``<workdir>/scratch/``, ``<workdir>/efficientnet_lite0/{head,finetune}/``), so a killed run
resumes where it stopped (``--no-resume`` starts over). Each mode writes a bundle to
``<workdir>/<mode>/bundle/``
(transfer bundles are an ``efficientnet_lite0`` with ``num_classes=5``: they predict from uint8
images of any size), a row of ``<workdir>/results.json``; figures go to ``<workdir>/figures/``
(``--visuals-dir visuals/flowers`` rewrites the README's committed ones instead).

Measured accuracies and times, each with its command and machine, are in
``visuals/flowers/README.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments import _cli

MODES = ("scratch", "feature_extraction", "fine_tuning")


def build_parser():
    p = _cli.make_parser("flowers", __doc__.split("\n")[0])
    _cli.add_common(p, "flowers", data_dir=True,
                    data_dir_help="image folder PATH/<class>/*.jpg (or PATH/train|val/<class>) "
                                  "(default: TFDS tf_flowers from $TFDS_DATA_DIR, else "
                                  "~/tensorflow_datasets)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {', '.join(MODES)}")
    p.add_argument("--val-fraction", type=_cli.unit_interval, default=0.15,
                   help="stratified fraction of the images held out for evaluation")
    p.add_argument("--image-size", type=_cli.positive_int, default=224,
                   help="side the photos are resized to when read (224: the backbone's own "
                        "input size, so no detail of the 227 px photos is thrown away)")
    p.add_argument("--input-size", type=_cli.positive_int, default=224,
                   help="side the pretrained network sees (224 = its ImageNet size; 160 costs "
                        "about half the time and measured 1.2-1.4 points less, see "
                        "visuals/flowers/README.md)")
    _cli.add_transfer_training(p)
    p.add_argument("--train-bn", action="store_true",
                   help="fine_tuning: update BatchNorm statistics (default: frozen; implies "
                        "the full forward pass per step, as --no-cache-activations)")
    p.add_argument("--scratch-model", default="cnn3",
                   help="scratch: model from jaxcnn.models.available()")
    p.add_argument("--scratch-size", type=_cli.positive_int, default=64,
                   help="scratch: image side the model trains at")
    p.add_argument("--scratch-epochs", type=_cli.positive_int, default=30,
                   help="scratch: training epochs")
    p.add_argument("--batch-size", type=_cli.positive_int, default=32,
                   help="batch size of scratch training and fine-tuning")
    _cli.add_run_flags(p)
    return p


def load_data(args):
    """The whole dataset (ArrayDataset, uint8 at --image-size)."""
    from jaxcnn.data import (
        ArrayDataset,
        DataNotFoundError,
        load_image_folder,
        load_tfds,
    )
    from jaxcnn.data.image_folder import scan_image_folder

    size = (args.image_size, args.image_size)
    if args.data_dir is not None:
        scan = scan_image_folder(args.data_dir, verify=False)
        print(scan.report())
        before = len(scan.skipped)
        data = load_image_folder(args.data_dir, image_size=size, scan=scan,
                                 progress=args.progress)
        failed = scan.report_skipped(before, what="image(s) that failed to decode")
        if failed:
            print(f"warning: {failed}", file=sys.stderr)
        if isinstance(data, tuple):  # train/ + val/ layout: pool them, then split ourselves
            data = ArrayDataset(np.concatenate([d.images for d in data]),
                                np.concatenate([d.labels for d in data]), data[0].class_names)
        return data
    try:
        return load_tfds("tf_flowers", "train", image_size=size, progress=args.progress)
    except DataNotFoundError as err:
        raise DataNotFoundError(
            f"{err}\nOr pass an image folder instead: --data-dir PATH with PATH/<class>/*.jpg "
            "(here: --data-dir ../shared/data/flowers)"
        ) from None


def lite0_features(ds, args):
    from jaxcnn import pretrained, transfer

    model, variables = pretrained.load("efficientnet_lite0")
    prep = transfer.backbone_preprocess("efficientnet_lite0", (args.input_size,) * 2)
    start = time.perf_counter()
    feats = transfer.extract_features(model, variables, ds.images, prep, 64,
                                      cache_dir=args.workdir / "cache",
                                      name="efficientnet_lite0", progress=args.progress)
    return model, variables, prep, feats, time.perf_counter() - start


def save_bundle(args, mode, name, options, variables, ds, prep_dict, row):
    from jaxcnn import export

    return export.save(args.workdir / mode / "bundle", model_name=name, model_options=options,
                       variables=variables, class_names=ds.class_names,
                       preprocessing=prep_dict, metrics=row)


def run_transfer(ds, val_idx, train_idx, args, modes, outcomes):
    import jax

    from jaxcnn import evaluate, models, transfer

    model, variables, prep, feats, extract_s = lite0_features(ds, args)
    runs = args.workdir / "efficientnet_lite0"  # checkpoints and metrics.jsonl of each phase
    print(f"features {feats.shape} in {extract_s:.0f} s (cached in {args.workdir / 'cache'})")
    yv, yt = ds.labels[val_idx], ds.labels[train_idx]
    start = time.perf_counter()
    head, hist = transfer.train_head(feats[train_idx], yt, ds.num_classes,
                                     val=(feats[val_idx], yv), epochs=args.head_epochs,
                                     lr=args.head_lr, seed=args.seed, progress=args.progress,
                                     workdir=runs / "head", resume=args.resume)
    head_s = time.perf_counter() - start
    logits = np.asarray(transfer.head_logits(head, feats[val_idx]))
    model_k = models.create("efficientnet_lite0", num_classes=ds.num_classes)
    variables_k = transfer.with_head(variables, head)
    prep_dict = dict(input_size=(args.input_size,) * 2, mean=prep.mean, std=prep.std)
    if "feature_extraction" in modes:
        row = dict(mode="feature_extraction", model="efficientnet_lite0 (frozen) + Dense head",
                   val_accuracy=evaluate.accuracy(logits, yv),
                   trainable_params=int(head["kernel"].size + head["bias"].size),
                   feature_seconds=extract_s, train_seconds=head_s, epochs=args.head_epochs,
                   input_size=args.input_size, n_train=len(train_idx), n_val=len(val_idx))
        save_bundle(args, "feature_extraction", "efficientnet_lite0", {}, variables_k, ds,
                    prep_dict, row)
        outcomes["feature_extraction"] = dict(row=row, logits=logits, history=hist)
    if "fine_tuning" in modes:
        train, val = ds.take(train_idx), ds.take(val_idx)
        trainable = transfer.top_blocks(variables_k["params"], args.trainable_blocks,
                                        model=model_k)
        print(f"fine-tuning {trainable} (BatchNorm statistics "
              f"{'updated' if args.train_bn else 'frozen'})")
        start = time.perf_counter()
        tuned, hist2 = transfer.fine_tune(
            model_k, variables_k, train, val, prep, trainable=trainable,
            epochs=args.fine_tune_epochs, batch_size=args.batch_size, lr=args.fine_tune_lr,
            freeze_bn=not args.train_bn, seed=args.seed, progress=args.progress,
            cache_activations=args.cache_activations, cache_dir=args.workdir / "cache",
            cache_name="efficientnet_lite0-activations", workdir=runs / "finetune",
            resume=args.resume)
        ft_s = time.perf_counter() - start
        logits2 = transfer.predict_logits(model_k, tuned, val.images, prep)
        n_head = len(hist)
        history = hist + [dict(r, epoch=r["epoch"] + n_head) for r in hist2]
        row = dict(mode="fine_tuning", model="efficientnet_lite0, top "
                   f"{args.trainable_blocks} blocks + head",
                   val_accuracy=evaluate.accuracy(logits2, yv),
                   trainable_params=int(sum(np.size(x) for k in trainable for x in
                                            jax.tree.leaves(tuned["params"][k]))),
                   feature_seconds=extract_s, train_seconds=head_s + ft_s,
                   epochs=n_head + args.fine_tune_epochs, input_size=args.input_size,
                   n_train=len(train_idx), n_val=len(val_idx))
        save_bundle(args, "fine_tuning", "efficientnet_lite0", {}, tuned, ds, prep_dict, row)
        outcomes["fine_tuning"] = dict(row=row, logits=logits2, history=history)


def run_scratch(ds, val_idx, train_idx, args, outcomes):
    from jaxcnn import models
    from jaxcnn.data import ArrayDataset, resize_images
    from jaxcnn.evaluate import accuracy, predict_logits
    from jaxcnn.train import FitConfig, fit

    size = (args.scratch_size,) * 2
    small = ArrayDataset(resize_images(ds.images, size), ds.labels, ds.class_names)
    train, val = small.take(train_idx), small.take(val_idx)
    model = models.create(args.scratch_model, num_classes=ds.num_classes)
    config = FitConfig(epochs=args.scratch_epochs, batch_size=args.batch_size, optimizer="adamw",
                       lr=2e-3, schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1,
                       seed=args.seed, augment=True, crop_pad=8, eval_batch_size=100)
    start = time.perf_counter()
    # Normalisation defaults to the training images' per-channel statistics.
    result = fit(model, train, val, config=config, workdir=args.workdir / "scratch",
                 resume=args.resume, progress=args.progress)
    seconds = time.perf_counter() - start
    preprocess = result.preprocess
    variables = result.state.variables
    logits = predict_logits(model.apply, variables, val.images, mean=preprocess.mean,
                            std=preprocess.std, batch_size=100)
    row = dict(mode="scratch", model=f"{args.scratch_model} at {args.scratch_size}px",
               val_accuracy=accuracy(logits, val.labels),
               trainable_params=models.count_params(variables["params"]), feature_seconds=0.0,
               train_seconds=seconds, epochs=args.scratch_epochs, input_size=args.scratch_size,
               n_train=len(train), n_val=len(val))
    save_bundle(args, "scratch", args.scratch_model, {}, variables, ds,
                dict(input_size=size, mean=preprocess.mean, std=preprocess.std), row)
    outcomes["scratch"] = dict(row=row, logits=logits, history=result.history)


def format_table(rows) -> str:
    """The printed summary: one line per mode's results row."""
    columns = [("mode", 20), ("val acc", 8), ("trainable", 11), ("features s", 10),
               ("train s", 8)]
    return _cli.format_table(columns, [
        [r["mode"], f"{100 * r['val_accuracy']:.2f}%", f"{r['trainable_params']:,}",
         f"{r['feature_seconds']:.0f}", f"{r['train_seconds']:.0f}"] for r in rows])


def write_figures(visuals: Path, ds, val_idx, outcomes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxcnn import evaluate
    from jaxcnn.viz import results as fig

    visuals.mkdir(parents=True, exist_ok=True)
    names = list(outcomes)
    accs = [outcomes[n]["row"]["val_accuracy"] for n in names]
    f, ax = plt.subplots(figsize=(6, 3.8))
    bars = ax.bar(names, accs, color=[f"C{i}" for i in range(len(names))])
    for b, a in zip(bars, accs, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, a + 0.01, f"{a:.1%}", ha="center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Flowers ({ds.num_classes} classes, {len(val_idx)} held-out photos)")
    f.tight_layout()
    f.savefig(visuals / "accuracy_comparison.png", dpi=150)
    plt.close(f)
    hist = {n: o["history"] for n, o in outcomes.items() if o.get("history")}
    if hist:
        fig.training_curves(hist, visuals / "training_curves.png",
                            title="Flowers training curves (held-out dashed)")
    y = ds.labels[val_idx]
    best = max(outcomes, key=lambda n: outcomes[n]["row"]["val_accuracy"])
    logits = outcomes[best]["logits"]
    cm = evaluate.confusion_matrix(logits.argmax(-1), y, ds.num_classes)
    fig.confusion_matrix_plot(cm, ds.class_names, visuals / "confusion_matrix.png",
                              title=f"{best}: confusion matrix (held-out)")
    fig.prediction_grid(ds.images[val_idx], y, evaluate.softmax(logits), ds.class_names,
                        visuals / "predictions.png", n=16,
                        title=f"{best} predictions (green: correct, red: wrong)")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--modes: unknown mode(s) {bad or [args.modes]}; choose from "
                         f"{', '.join(MODES)}")
    if "scratch" in modes:
        from jaxcnn import models

        if args.scratch_model not in models.available():
            raise ValueError(f"--scratch-model: unknown model {args.scratch_model!r}; "
                             f"available: {', '.join(models.available())}")
    from jaxcnn.data.splits import stratified_split

    ds = load_data(args)
    val_idx, train_idx = stratified_split(ds.labels, args.val_fraction, seed=args.seed,
                                          num_classes=ds.num_classes)
    print(f"{len(ds)} images, {ds.num_classes} classes {ds.class_names}; train {len(train_idx)}, "
          f"held-out {len(val_idx)} (stratified, seed {args.seed})")
    if "scratch" in modes or "fine_tuning" in modes:
        _cli.check_batch_size(args.batch_size, len(train_idx))
    outcomes: dict = {}
    if "scratch" in modes:
        run_scratch(ds, val_idx, train_idx, args, outcomes)
    if "feature_extraction" in modes or "fine_tuning" in modes:
        run_transfer(ds, val_idx, train_idx, args, modes, outcomes)
    results = {}
    for name, o in outcomes.items():
        row = dict(o["row"], command="python -m experiments.flowers " + " ".join(
            sys.argv[1:] if argv is None else argv))
        results = _cli.update_results(args.workdir / "results.json", name, row)
        print(f"{name}: {100 * row['val_accuracy']:.2f}% held-out accuracy")
    _cli.print_table(format_table([o["row"] for o in outcomes.values()]),
                     args.workdir / "results.json")
    if args.figures and outcomes:
        figures = _cli.figures_dir(args)
        write_figures(figures, ds, val_idx, outcomes)
        print(f"figures: {figures}/")
    return results


if __name__ == "__main__":
    _cli.run(main)
