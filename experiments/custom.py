"""Your own image folder: scan, class weights, two-phase transfer learning, export, predictions.

    python -m experiments.custom --data-dir PATH                 # PATH/<class>/*.jpg
    python -m experiments.custom --data-dir PATH --fine-tune-epochs 0   # phase 1 only (fast)
    python -m jaxcnn.predict runs/custom/bundle new_photo.jpg    # classify new images

Steps:

1. Scan ``PATH`` (``PATH/<class>/*`` or ``PATH/train/<class>`` + ``PATH/val/<class>``): class
   counts, imbalance ratio, skipped corrupt / non-image files (listed with the reason).
2. Read every image as RGB at ``--input-size`` (grayscale and RGBA converted); an image that
   fails to decode (truncated JPEGs included) is named with the reason and left out. Hold out a
   stratified ``--val-fraction`` unless ``val/`` exists (every class with 2+ images on both
   sides when the fraction allows; :func:`jaxcnn.data.splits.stratified_split`).
3. Balanced class weights ``n / (k * count)`` enter the loss when the imbalance ratio exceeds
   ``--weight-threshold`` (or always / never with ``--class-weights on|off``).
4. Phase 1: EfficientNet-Lite0 (ImageNet) features, computed once and cached in
   ``<workdir>/cache/``, and a new Dense head trained on them. Phase 2 (``--fine-tune-epochs``
   > 0): the top ``--trainable-blocks`` modules and the head fine-tuned at a lower learning
   rate with BatchNorm statistics frozen. The frozen modules' output is computed once (also
   cached; ``--no-cache-activations`` runs the whole network every step instead) so each step
   costs only the trainable top part. Both phases write checkpoints and ``metrics.jsonl`` in
   ``<workdir>/efficientnet_lite0/{head,finetune}/``: a killed run resumes where it stopped
   (``--no-resume`` starts over).
5. Export to ``<workdir>/bundle/`` (``python -m jaxcnn.predict`` reads it), metrics in
   ``<workdir>/results.json``, a figure of held-out predictions in ``<workdir>/figures/``
   (``--visuals-dir visuals/custom`` rewrites the README's committed one instead).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments import _cli


def build_parser():
    p = _cli.make_parser("custom", __doc__.split("\n")[0])
    _cli.add_common(p, "custom", data_dir=False)
    p.add_argument("--data-dir", type=str, required=True,
                   help="image folder: PATH/<class>/<images> or PATH/train|val/<class>/<images>")
    p.add_argument("--val-fraction", type=_cli.unit_interval, default=0.15,
                   help="stratified held-out fraction (ignored when PATH/val exists)")
    p.add_argument("--input-size", type=_cli.positive_int, default=224,
                   help="side the images are resized to (224 = the network's ImageNet size)")
    p.add_argument("--class-weights", choices=("auto", "on", "off"), default="auto",
                   help="balanced class weights in the loss; auto: on when the imbalance ratio "
                        "exceeds --weight-threshold")
    p.add_argument("--weight-threshold", type=_cli.positive_float, default=1.5,
                   help="imbalance ratio (largest / smallest class) above which auto weights")
    _cli.add_transfer_training(p, zero_epochs_skip=True)
    p.add_argument("--batch-size", type=_cli.positive_int, default=32,
                   help="phase 2 batch size, capped at the number of training images")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="train the head and the fine-tuning from scratch even when their "
                        "checkpoints exist in --workdir")
    _cli.add_progress(p)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from jaxcnn import evaluate, export, models, pretrained, transfer
    from jaxcnn.data import balanced_class_weights, load_image_folder, scan_image_folder
    from jaxcnn.data.splits import stratified_split
    from jaxcnn.distributed import is_primary
    from jaxcnn.predict import predictions_figure

    scan = scan_image_folder(args.data_dir)
    print(scan.report())
    size = (args.input_size, args.input_size)
    before = len(scan.skipped)
    data = load_image_folder(args.data_dir, image_size=size, scan=scan, progress=args.progress)
    failed = scan.report_skipped(before, what="image(s) that failed to decode")
    if failed:
        print(f"warning: {failed}", file=sys.stderr)
    if isinstance(data, tuple):
        train, val = data
        if len(val) == 0:
            raise ValueError(f"{scan.root}/val holds no readable images; add some, or move "
                             "them into the class folders to hold out --val-fraction")
    else:
        val_idx, train_idx = stratified_split(data.labels, args.val_fraction, seed=args.seed,
                                              num_classes=data.num_classes)
        train, val = data.take(train_idx), data.take(val_idx)
    names = train.class_names
    weights = balanced_class_weights(train.labels, train.num_classes)
    ratio = float(train.class_counts().max() / max(train.class_counts().min(), 1))
    use_w = args.class_weights == "on" or (args.class_weights == "auto"
                                            and ratio > args.weight_threshold)
    shown = ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights, strict=True))
    print(f"train {len(train)}, held-out {len(val)}; imbalance {ratio:.2f}; class weights "
          f"{shown} ({'used' if use_w else 'not used'})")
    cw = weights if use_w else None

    model, variables = pretrained.load("efficientnet_lite0")
    prep = transfer.backbone_preprocess("efficientnet_lite0", size)
    t0 = time.perf_counter()
    cache = args.workdir / "cache"
    runs = args.workdir / "efficientnet_lite0"  # checkpoints and metrics.jsonl of each phase
    f_train = transfer.extract_features(model, variables, train.images, prep, 64,
                                        cache_dir=cache, name="train", progress=args.progress)
    f_val = transfer.extract_features(model, variables, val.images, prep, 64,
                                      cache_dir=cache, name="val", progress=args.progress)
    head, hist = transfer.train_head(f_train, train.labels, train.num_classes,
                                     val=(f_val, val.labels), epochs=args.head_epochs,
                                     lr=args.head_lr, class_weights=cw, seed=args.seed,
                                     progress=args.progress, workdir=runs / "head",
                                     resume=args.resume)
    logits = np.asarray(transfer.head_logits(head, f_val))
    row = {"phase1_val_accuracy": evaluate.accuracy(logits, val.labels)}
    print(f"phase 1 (head on frozen features): {row['phase1_val_accuracy']:.2%}")
    model_k = models.create("efficientnet_lite0", num_classes=train.num_classes)
    tuned = transfer.with_head(variables, head)
    if args.fine_tune_epochs > 0:
        trainable = transfer.top_blocks(tuned["params"], args.trainable_blocks,
                                        model=model_k)
        tuned, hist2 = transfer.fine_tune(
            model_k, tuned, train, val, prep, trainable=trainable, epochs=args.fine_tune_epochs,
            batch_size=min(args.batch_size, len(train)), lr=args.fine_tune_lr, class_weights=cw,
            seed=args.seed, progress=args.progress, cache_activations=args.cache_activations,
            cache_dir=cache, workdir=runs / "finetune", resume=args.resume)
        logits = transfer.predict_logits(model_k, tuned, val.images, prep)
        row["phase2_val_accuracy"] = evaluate.accuracy(logits, val.labels)
        print(f"phase 2 (top {args.trainable_blocks} blocks fine-tuned): "
              f"{row['phase2_val_accuracy']:.2%}")
    row.update(val_accuracy=row.get("phase2_val_accuracy", row["phase1_val_accuracy"]),
               n_train=len(train), n_val=len(val), imbalance_ratio=ratio,
               class_weights=[round(float(w), 4) for w in weights] if use_w else None,
               skipped=[f"{p}: {r}" for p, r in scan.skipped],
               seconds=time.perf_counter() - t0)
    bundle = export.save(args.workdir / "bundle", model_name="efficientnet_lite0",
                         model_options={}, variables=tuned, class_names=names,
                         preprocessing=dict(input_size=size, mean=prep.mean, std=prep.std),
                         metrics={k: v for k, v in row.items() if k != "skipped"})
    _cli.write_json(args.workdir / "results.json", row)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    show = np.random.default_rng(args.seed).permutation(len(val))[:6]
    k = min(3, len(names))
    results = []
    for i in show:
        order = np.argsort(-probs[i])[:k]
        results.append((Path(f"held-out #{i} (true: {names[val.labels[i]]})"), val.images[i],
                        [(names[j], float(probs[i, j])) for j in order]))
    fig = predictions_figure(results, _cli.figures_dir(args) / "predictions.png",
                             title="Held-out predictions") if is_primary() else None
    print(f"bundle: {bundle}\nresults: {args.workdir / 'results.json'}\nfigure: {fig}\n"
          f"classify new images: python -m jaxcnn.predict {bundle} IMAGE...")
    return row


if __name__ == "__main__":
    _cli.run(main)
