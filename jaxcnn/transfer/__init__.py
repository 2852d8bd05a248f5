"""Transfer learning: a pretrained backbone as a frozen feature extractor, or fine-tuned.

::

    from jaxcnn import models, pretrained, transfer

    model, variables = pretrained.load("efficientnet_lite0")
    prep = transfer.image_preprocess((224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    f_train = transfer.extract_features(model, variables, train.images, prep, cache_dir="runs")
    head, hist = transfer.train_head(f_train, train.labels, train.num_classes,
                                     val=(f_val, val.labels))
    variables5 = transfer.with_head(variables, head)   # efficientnet_lite0 with num_classes=5
    model5 = models.create("efficientnet_lite0", num_classes=5)
    # optional phase 2: unfreeze the top blocks at a lower learning rate
    top3 = transfer.top_blocks(variables5["params"], 3, model=model5)  # block14, block15, head_conv
    variables5, hist2 = transfer.fine_tune(model5, variables5, train, val, prep, trainable=top3,
                                           cache_dir="runs")

**Feature extraction.** The backbone runs once over the data in inference mode
(``train=False``: BatchNorm normalises with its ImageNet running statistics, dropout is off) and
its pooled features (``return_features=True``; 1280-d for EfficientNet-Lite0) are cached in an
``.npz`` keyed by a hash of the model, its variables, the preprocessing and the images. A new
``head`` (one Dense layer, dropout before it) is then trained on the cached features: many
epochs per second on a CPU instead of one forward pass through the backbone per step.

**Fine-tuning (two-phase).** Phase 1 trains the head alone (above): a randomly initialised head
sends large, noisy gradients into the backbone and would wreck the pretrained filters. Phase 2
unfreezes the top ``N`` blocks (:func:`top_blocks`) and trains them together with the head at
a lower learning rate. Freezing uses ``optax.multi_transform`` with labels computed from each
parameter's path: frozen leaves get ``optax.set_to_zero()``, so they stay bitwise unchanged (no
weight decay, no momentum drift), and their gradients are cut with ``stop_gradient`` so XLA does
not even compute them. The modules below the lowest trainable one are frozen and in inference
mode, so :func:`fine_tune` computes their output once (:func:`extract_activations`, cached like
the features) and each step runs only the top part (``model.from_block``, EfficientNet-Lite's
split forward); ``cache_activations=False`` runs the whole network per step instead.

**BatchNorm statistics stay frozen by default** (``freeze_bn=True``): the backbone is applied
with ``train=False`` (running statistics, not batch statistics, and no updates to them) while
dropout before the head stays on. Why: fine-tuning batches are small (often 16-64 images on a
CPU) and come from a new domain, so per-batch mean/variance are noisy and differ from the
ImageNet statistics the following layers were trained with. Updating the running averages from
them drifts the statistics of every BatchNorm layer (including the frozen blocks', whose weights
were tuned for the old statistics), and at evaluation the network sees activations scaled
differently from what it trained on; accuracy drops, sometimes far below the frozen-feature
baseline. This is the most common way users lose accuracy when fine-tuning (Keras's
transfer-learning guide gives the same advice). ``freeze_bn=False`` opts in to batch statistics
for the trainable blocks when batches are large.

**One engine.** Head training and fine-tuning are ``jaxcnn.train``'s: the step of
:func:`jaxcnn.train.make_train_step` (on ready inputs: features or activations), its loss
:func:`jaxcnn.train.cross_entropy` (optional class weights), the optimizer of
:func:`jaxcnn.train.make_optimizer` (AdamW; no weight decay on biases and BatchNorm) and the
batched inference of :func:`jaxcnn.evaluate.run_batched`; their history has ``fit``'s keys.

Modules: :mod:`~jaxcnn.transfer.features` (preprocessing, feature and activation extraction,
the cache), :mod:`~jaxcnn.transfer.freezing` (freeze labels, top blocks, split point, the
optimizer), :mod:`~jaxcnn.transfer.head` (the Dense head and the ``apply_fn`` that trains it),
:mod:`~jaxcnn.transfer.training` (head training and fine-tuning).
"""

from jaxcnn.transfer.features import (
    backbone_preprocess,
    extract_activations,
    extract_features,
    features_cache_key,
    image_preprocess,
    predict_logits,
    run_on_images,
)
from jaxcnn.transfer.freezing import (
    FROZEN,
    TRAINABLE,
    freeze_labels,
    frozen_mask,
    make_freezing_optimizer,
    split_point,
    top_blocks,
    transfer_optimizer,
)
from jaxcnn.transfer.head import classifier_apply, head_logits, init_head, with_head
from jaxcnn.transfer.training import (
    fine_tune,
    fine_tune_state,
    make_fine_tune_step,
    train_head,
)

__all__ = [
    "FROZEN",
    "TRAINABLE",
    "backbone_preprocess",
    "classifier_apply",
    "extract_activations",
    "extract_features",
    "features_cache_key",
    "fine_tune",
    "fine_tune_state",
    "freeze_labels",
    "frozen_mask",
    "head_logits",
    "image_preprocess",
    "init_head",
    "make_fine_tune_step",
    "make_freezing_optimizer",
    "predict_logits",
    "run_on_images",
    "split_point",
    "top_blocks",
    "train_head",
    "transfer_optimizer",
    "with_head",
]
