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
``head`` (one Dense layer, dropout before it) is then trained with optax on the cached features:
thousands of epochs per second on a CPU instead of one forward pass through the backbone per
step.

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
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

__all__ = [
    "extract_activations",
    "extract_features",
    "fine_tune",
    "freeze_labels",
    "head_logits",
    "image_preprocess",
    "init_head",
    "make_freezing_optimizer",
    "make_fine_tune_step",
    "predict_logits",
    "split_point",
    "top_blocks",
    "train_head",
    "with_head",
]

TRAINABLE, FROZEN = "trainable", "frozen"


# --------------------------------------------------------------------------------------------
# Preprocessing and feature extraction
# --------------------------------------------------------------------------------------------


def image_preprocess(
    input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(N, h, w, 3)`` -> float32 ``(N, H, W, 3)``: resize, then ``(x / 255 - mean) / std``.

    The resize is :func:`jaxcnn.data.resize_images` (PIL bilinear), exactly what
    :class:`jaxcnn.export.Bundle` does, so a head trained on these features gives the same
    predictions once exported. The returned function has ``.input_size``, ``.mean``, ``.std``.
    """
    from jaxcnn.data import resize_images

    size = (int(input_size[0]), int(input_size[1]))
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)

    def prep(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 (N, H, W, C) images, got {images.dtype} "
                             f"{images.shape}")
        if images.shape[1:3] != size:
            images = resize_images(images, size)
        return (images.astype(np.float32) / np.float32(255.0) - m) / s

    prep.input_size = size
    prep.mean = tuple(float(v) for v in m)
    prep.std = tuple(float(v) for v in s)
    prep.key = f"resize{size}-mean{prep.mean}-std{prep.std}"
    return prep


def backbone_preprocess(
    name: str, input_size: tuple[int, int]
) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`image_preprocess` with the normalisation of the pretrained network ``name``
    (``jaxcnn.pretrained.PRETRAINED[name].preprocessing``), at ``input_size``."""
    from jaxcnn.pretrained import PRETRAINED

    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained network {name!r}; available: {sorted(PRETRAINED)}")
    spec = PRETRAINED[name].preprocessing
    if spec.pixel_scale != 255.0 or spec.channel_order != "RGB":
        raise ValueError(f"{name}'s preprocessing ({spec.channel_order}, pixels / "
                         f"{spec.pixel_scale}) is not a per-channel mean/std on [0, 1] RGB; "
                         "use jaxcnn.pretrained.preprocess for it")
    return image_preprocess(input_size, spec.mean, spec.std)


def _hash_tree(h, tree) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")
    for k in sorted(flat):
        a = np.ascontiguousarray(np.asarray(flat[k]))
        h.update(k.encode())
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())


def features_cache_key(model, variables, images: np.ndarray, preprocess_key: str) -> str:
    """A 20-hex-digit hash of (model definition, variables, preprocessing, images)."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    _hash_tree(h, variables)
    h.update(preprocess_key.encode())
    h.update(str((images.shape, images.dtype.str)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:20]


def _check_images(images_uint8, batch_size) -> np.ndarray:
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or len(images_uint8) == 0:
        raise ValueError(f"images_uint8 must be non-empty uint8 (N, H, W, C), got "
                         f"{images_uint8.dtype} {images_uint8.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return images_uint8


def _run_batched(fn, variables, inputs, to_input, batch_size: int, *, desc: str | None = None,
                 progress: bool = False) -> np.ndarray:
    """``fn(variables, to_input(inputs[lo:hi]))`` over fixed-size batches, concatenated as
    float32 (the last batch is zero-padded, so ``fn`` compiles once); a tqdm bar with img/s."""
    n = len(inputs)
    chunks = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img", leave=False)
    start = time.perf_counter()
    for lo in range(0, n, batch_size):
        x = to_input(inputs[lo:lo + batch_size])
        m = len(x)
        if m < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - m, *x.shape[1:]), x.dtype)])
        chunks.append(np.asarray(fn(variables, x))[:m])
        if bar is not None:
            bar.update(m)
            bar.set_postfix(img_s=f"{(lo + m) / (time.perf_counter() - start):.1f}")
    if bar is not None:
        bar.close()
    return np.concatenate(chunks).astype(np.float32)


def _cached_forward(forward, model, variables, key_variables, images_uint8, preprocess_fn,
                    batch_size, *, cache_dir, name, key_suffix, progress) -> np.ndarray:
    """``forward(variables, x)`` over all images, cached as ``<cache_dir>/<name>-<hash>.npz``
    (key: :func:`features_cache_key` of ``key_variables`` and the preprocessing + suffix)."""
    images_uint8 = _check_images(images_uint8, batch_size)
    path = None
    if cache_dir is not None:
        key = features_cache_key(model, key_variables, images_uint8,
                                 getattr(preprocess_fn, "key", repr(preprocess_fn)) + key_suffix)
        path = Path(cache_dir) / f"{name}-{key}.npz"
        if path.is_file():
            with np.load(path) as data:
                return data["features"]
    out = _run_batched(jax.jit(forward), variables, images_uint8, preprocess_fn, batch_size,
                       desc=f"extracting {name}", progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, features=out)
        os.replace(tmp, path)
    return out


def extract_features(
    model: nn.Module,
    variables,
    images_uint8: np.ndarray,
    preprocess_fn: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 64,
    *,
    cache_dir: str | os.PathLike | None = None,
    name: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Pooled backbone features of every image, in inference mode, cached on disk.

    Args:
      model: a registry model with ``return_features`` (e.g. ``efficientnet_lite0``).
      variables: its ``params`` (+ ``batch_stats``); only the backbone part is used.
      images_uint8: ``(N, h, w, C)`` uint8.
      preprocess_fn: host function uint8 batch -> float32 model input (e.g.
        :func:`image_preprocess`); its ``key`` attribute (or its ``repr``) enters the cache key.
      batch_size: images per forward pass (the last batch is padded: one compilation).
      cache_dir: folder for ``<name>-<hash>.npz``; None disables caching.
      name: file name prefix of the cache.
      progress: tqdm bar with images/s.

    Returns:
      ``(N, D)`` float32 features (``D = 1280`` for EfficientNet-Lite0).
    """

    def forward(v, x):
        return model.apply(v, x, train=False, return_features=True).astype(jnp.float32)

    return _cached_forward(forward, model, variables, variables, images_uint8, preprocess_fn,
                           batch_size, cache_dir=cache_dir, name=name, key_suffix="",
                           progress=progress)


def split_point(model: nn.Module, params, trainable) -> int | None:
    """Where a fine-tuned network splits into a frozen bottom and a trained top part.

    Returns the index (in ``model.module_names()``) of the lowest module holding a trainable
    leaf of ``params`` (``trainable`` as in :func:`freeze_labels`); when only the ``head``
    trains, that of the last module (its input is several times smaller than its unpooled
    output for EfficientNet-Lite: 320 vs 1280 channels). None when there is nothing to
    split: the model has no split forward (``module_names``, ``stem_and_blocks``,
    ``from_block``: :class:`~jaxcnn.models.efficientnet_lite.EfficientNetLite` has one), a
    trainable top-level module is neither one of its modules nor ``head``, or the first module
    trains (nothing below it to cache).
    """
    if not all(hasattr(model, m) for m in ("module_names", "stem_and_blocks", "from_block")):
        return None
    names = list(model.module_names())
    flat = traverse_util.flatten_dict(dict(freeze_labels(params, trainable)))
    train_top = {k[0] for k, lab in flat.items() if lab == TRAINABLE}
    if not train_top <= {*names, "head"}:
        return None
    k = min((names.index(t) for t in train_top if t != "head"), default=len(names) - 1)
    return k or None


def _bottom_variables(model, variables, upto: int) -> dict:
    """The collections of ``variables`` restricted to modules ``0 .. upto - 1``."""
    below = set(model.module_names()[:upto])
    return {col: {k: v for k, v in tree.items() if k in below} for col, tree in variables.items()}


def extract_activations(
    model: nn.Module,
    variables,
    images_uint8: np.ndarray,
    preprocess_fn: Callable[[np.ndarray], np.ndarray],
    upto: int,
    batch_size: int = 64,
    *,
    flip: bool = False,
    cache_dir: str | os.PathLike | None = None,
    name: str = "activations",
    progress: bool = True,
) -> np.ndarray:
    """The activations entering module ``upto`` (inference mode), cached on disk.

    ``model.apply(variables, preprocess_fn(images), train=False, method=model.stem_and_blocks,
    upto=upto)`` in batches, stored float32 (exact: feeding them to ``model.from_block`` gives
    the logits of the full network). ``flip=True`` takes the horizontally mirrored images.
    The cache file ``<cache_dir>/<name>-<hash>.npz`` is keyed like :func:`extract_features`,
    by the variables of the modules below ``upto`` only (a new head or new top blocks reuse it),
    the preprocessing, ``upto``, ``flip`` and the images.

    Returns:
      ``(N, h, w, c)`` float32 (``(N, 5, 5, 192)`` entering ``block14`` of Lite0 at 160 px).
    """

    def forward(v, x):
        h = model.apply(v, x, train=False, method=model.stem_and_blocks, upto=upto)
        return h.astype(jnp.float32)

    prep = preprocess_fn
    if flip:
        def prep(images):
            return preprocess_fn(np.asarray(images)[:, :, ::-1])

        prep.key = getattr(preprocess_fn, "key", repr(preprocess_fn))
    return _cached_forward(forward, model, variables, _bottom_variables(model, variables, upto),
                           images_uint8, prep, batch_size, cache_dir=cache_dir,
                           name=name, key_suffix=f"-upto{upto}-flip{bool(flip)}",
                           progress=progress)


# --------------------------------------------------------------------------------------------
# A new head on cached features
# --------------------------------------------------------------------------------------------


def init_head(key: jax.Array, feature_dim: int, num_classes: int) -> dict:
    """Params ``{"kernel": (D, K), "bias": (K,)}`` of a fresh ``nn.Dense`` head."""
    return nn.Dense(num_classes).init(key, jnp.zeros((1, feature_dim)))["params"]


def head_logits(head: dict, features) -> jax.Array:
    """``features @ kernel + bias``: (N, D) -> (N, K) float32."""
    return jnp.asarray(features, jnp.float32) @ head["kernel"] + head["bias"]


def _weighted_ce(logits, labels, weights, num_classes, smoothing):
    onehot = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing) \
        if smoothing else jax.nn.one_hot(labels, num_classes)
    ce = optax.softmax_cross_entropy(logits, onehot)
    if weights is None:
        return ce.mean()
    w = weights[labels]
    return (ce * w).sum() / w.sum()


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    dropout: float = 0.2,
    label_smoothing: float = 0.1,
    class_weights: np.ndarray | None = None,
    seed: int = 0,
    head: dict | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Train a Dense head on fixed features with AdamW (cosine schedule), dropout before it.

    Args:
      features: (N, D) float32; labels: (N,) int in [0, num_classes).
      val: optional (features, labels) evaluated after every epoch.
      class_weights: optional (K,) loss weights (e.g. :func:`jaxcnn.data.image_folder.
        class_weights`) for imbalanced classes.
      head: start from these head params (default: a fresh :func:`init_head`).

    Returns:
      ``(head, history)``: head params and per-epoch records ``epoch, train_loss,
      train_accuracy, eval_loss, eval_accuracy, lr`` (the keys of the training-curve figure).
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.int32)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"features must be (N, D) with labels (N,), got {x.shape}, {y.shape}")
    n = len(x)
    bs = min(batch_size, n)
    steps = n // bs
    key = jax.random.key(seed)
    params = head if head is not None else init_head(key, x.shape[1], num_classes)
    schedule = optax.cosine_decay_schedule(lr, epochs * steps)
    tx = optax.adamw(schedule, weight_decay=weight_decay)
    opt_state = tx.init(params)
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    @jax.jit
    def epoch_fn(params, opt_state, rng, xs, ys):
        """One epoch as a lax.scan over (steps, bs) minibatches."""

        def step(carry, batch):
            p, s, r = carry
            r, dk = jax.random.split(r)
            bx, by = batch

            def loss_fn(p):
                keep = jax.random.bernoulli(dk, 1.0 - dropout, bx.shape) if dropout else None
                h = jnp.where(keep, bx / (1.0 - dropout), 0.0) if dropout else bx
                logits = head_logits(p, h)
                return _weighted_ce(logits, by, cw, num_classes, label_smoothing), logits

            (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
            upd, s = tx.update(g, s, p)
            p = optax.apply_updates(p, upd)
            return (p, s, r), (loss, (logits.argmax(-1) == by).mean())

        (params, opt_state, rng), (losses, accs) = jax.lax.scan(
            step, (params, opt_state, rng), (xs, ys))
        return params, opt_state, rng, losses.mean(), accs.mean()

    @jax.jit
    def eval_fn(params, xs, ys):
        logits = head_logits(params, xs)
        loss = _weighted_ce(logits, ys, None, num_classes, 0.0)
        return loss, (logits.argmax(-1) == ys).mean()

    history = []
    rng = np.random.default_rng(seed)
    jrng = jax.random.fold_in(key, 1)
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="training head", unit="epoch", leave=False)
    for epoch in it:
        order = rng.permutation(n)[: steps * bs]
        xs = x[order].reshape(steps, bs, -1)
        ys = y[order].reshape(steps, bs)
        params, opt_state, jrng, loss, acc = epoch_fn(params, opt_state, jrng, xs, ys)
        rec = {"epoch": epoch + 1, "train_loss": float(loss), "train_accuracy": float(acc),
               "lr": float(schedule(epoch * steps))}
        if val is not None:
            vl, va = eval_fn(params, jnp.asarray(val[0], jnp.float32), jnp.asarray(val[1]))
            rec.update(eval_loss=float(vl), eval_accuracy=float(va))
        history.append(rec)
        if progress:
            it.set_postfix(loss=f"{rec['train_loss']:.3f}",
                           acc=f"{rec.get('eval_accuracy', rec['train_accuracy']):.3f}")
    return jax.device_get(params), history


def with_head(variables, head: dict) -> dict:
    """A copy of ``variables`` whose ``params["head"]`` is ``head`` (other leaves shared)."""
    out = dict(variables)
    params = dict(out["params"])
    params["head"] = {k: jnp.asarray(v) for k, v in head.items()}
    out["params"] = params
    return out


# --------------------------------------------------------------------------------------------
# Freezing and fine-tuning
# --------------------------------------------------------------------------------------------


def top_blocks(params, n: int, *, head: str = "head", model: nn.Module | None = None
               ) -> tuple[str, ...]:
    """Names of the top-level modules trained when the top ``n`` blocks are unfrozen.

    The top-level entries of ``params`` other than ``head`` are taken in network order and
    the last ``n`` of them, plus ``head``, are returned; ``n = 0`` trains the head only. The
    network order is ``model.module_names()`` when ``model`` has it (``stem, block0, ...,
    block15, head_conv`` for EfficientNet-Lite0); without ``model`` it is the key order of
    ``params``, which is the order Flax created the modules in only for params straight from
    ``model.init`` outside jit: params that went through ``jax.jit`` or ``jax.tree`` functions
    (including ``jaxcnn.pretrained.load``) have sorted keys (``block0, block1, block10, ...,
    head_conv, stem``), so pass ``model`` for them.
    """
    names = [k for k in params if k != head]
    order = getattr(model, "module_names", None)
    if order is not None:
        order = list(order())
        if set(order) != set(names):
            raise ValueError(f"params hold modules {sorted(names)} below {head!r}, the model "
                             f"{order}")
        names = order
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(names):
        raise ValueError(f"n must be an int in [0, {len(names)}] (blocks below the head: "
                         f"{names}), got {n!r}")
    return (*names[len(names) - n:], head) if n else (head,)


def freeze_labels(params, trainable: Sequence[str] | Callable[[tuple[str, ...]], bool]):
    """A pytree like ``params`` of ``"trainable"`` / ``"frozen"`` labels from each leaf's path.

    ``trainable``: top-level module names (a leaf is trainable when its path starts with one),
    or a predicate on the path tuple (e.g. ``lambda p: p[0].startswith("block1")``).
    """
    if callable(trainable):
        pred = trainable
    else:
        names = set(trainable)
        unknown = names - set(params)
        if unknown:
            raise ValueError(f"trainable modules {sorted(unknown)} are not in the params; "
                             f"top-level modules: {list(params)}")

        def pred(path):
            return path[0] in names

    flat = traverse_util.flatten_dict(dict(params))
    labels = {k: TRAINABLE if pred(k) else FROZEN for k in flat}
    return traverse_util.unflatten_dict(labels)


def make_freezing_optimizer(tx: optax.GradientTransformation, labels):
    """``tx`` on the trainable leaves, ``optax.set_to_zero()`` on the frozen ones."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def make_fine_tune_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    labels,
    num_classes: int,
    *,
    freeze_bn: bool = True,
    dropout: float = 0.2,
    label_smoothing: float = 0.0,
    class_weights=None,
    start: int | None = None,
):
    """A jitted step ``(params, batch_stats, opt_state, key, x, y) -> (params, batch_stats,
    opt_state, loss, accuracy)``.

    ``start=k`` (needs ``freeze_bn``): ``x`` is the activation entering module ``k``
    (:func:`extract_activations`) and only ``model.from_block(x, start=k)`` runs; the result is
    that of the step on the images whose activations ``x`` are.

    The model must accept ``return_features=True`` and hold its classifier in ``params["head"]``
    (the registry convention). Features come from the backbone with ``train=False`` when
    ``freeze_bn`` (running statistics, unchanged) or ``train=True`` with updated statistics
    otherwise; dropout (``dropout``) is applied to them before the head in both cases. Frozen
    params pass through ``stop_gradient`` (XLA skips their gradients) and get zero updates.
    """
    if start is not None and not freeze_bn:
        raise ValueError("start (cached activations) needs freeze_bn=True: with batch "
                         "statistics the frozen bottom part changes from step to step")
    cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    split = {} if start is None else dict(method=model.from_block, start=start)

    def forward(params, batch_stats, x, key, train_bn):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        if train_bn and batch_stats:
            feats, upd = model.apply(variables, x, train=True, return_features=True,
                                     mutable=["batch_stats"], rngs={"dropout": key})
            new_stats = upd["batch_stats"]
        else:
            feats = model.apply(variables, x, train=False, return_features=True, **split)
            new_stats = batch_stats
        if dropout:
            keep = jax.random.bernoulli(jax.random.fold_in(key, 7), 1.0 - dropout, feats.shape)
            feats = jnp.where(keep, feats / (1.0 - dropout), 0.0)
        return head_logits(params["head"], feats), new_stats

    @jax.jit
    def step(params, batch_stats, opt_state, key, x, y):
        def loss_fn(p):
            p = jax.tree.map(lambda a, lab: a if lab == TRAINABLE else jax.lax.stop_gradient(a),
                             p, labels)
            logits, stats = forward(p, batch_stats, x, key, not freeze_bn)
            return _weighted_ce(logits, y, cw, num_classes, label_smoothing), (logits, stats)

        (loss, (logits, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        return params, stats, opt_state, loss, (logits.argmax(-1) == y).mean()

    return step


def fine_tune(
    model: nn.Module,
    variables,
    train,
    val,
    preprocess_fn: Callable[[np.ndarray], np.ndarray],
    *,
    trainable: Sequence[str],
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    freeze_bn: bool = True,
    dropout: float = 0.2,
    label_smoothing: float = 0.1,
    flip: bool = True,
    class_weights=None,
    eval_batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    cache_activations: bool = True,
    cache_dir: str | os.PathLike | None = None,
    cache_name: str = "activations",
) -> tuple[dict, list[dict]]:
    """Phase 2: train the modules in ``trainable`` (see :func:`top_blocks`) on images.

    **Cached activations (default).** The modules below the lowest trainable one are frozen
    and, with ``freeze_bn``, run in inference mode (running BatchNorm statistics; the model
    has no dropout or drop-connect below the head), so their output is a fixed function of
    the image. With ``cache_activations`` it is computed once (:func:`extract_activations`:
    train images, their mirror images when ``flip``, and the ``val`` images; stored float32 in
    ``cache_dir`` when given, else held in memory) and every step runs only the top part
    (``model.from_block``): one jit-compiled step, the same updates as the full forward pass
    (same batches, flips and dropout keys; equal params up to float rounding). The price: the
    only augmentation in phase 2 is the horizontal flip (both orientations are cached, which
    doubles the one-time pass over the training images), no crops, colour or other image
    augmentation. It needs a model with a split forward (:func:`split_point`, e.g.
    EfficientNet-Lite) and ``freeze_bn=True``; otherwise, or with ``cache_activations=False``,
    every step runs the whole network on the preprocessed images (required to update
    BatchNorm statistics, ``freeze_bn=False``, or to add image augmentation).

    Measured (2 CPU cores shared with a training job, under ``nice -n 19``): 256 photos of
    ``../shared/data/flowers`` (random, stratified), 160 px, Lite0 with ``top_blocks(params, 3,
    model=model)`` (block14, block15, head_conv; the cache enters block14 at (5, 5, 192)) and
    the head, batch 32, flips, dropout 0.2, one epoch of 8 steps after a compile step; the
    variants' steps interleaved on the same batches, so each pair shares the machine's load;
    cached and full gave identical params after the epoch:

    ================================  ============  ============  ====================
    depthwise convolution             full forward  cached (top)  cached / full
    ================================  ============  ============  ====================
    ``depthwise_impl="lax"`` (XLA's)  11.9 img/s    25.1 img/s    2.1x (pairs 1.6-2.4)
    ``"shift"`` (default on CPU)      49.5 img/s    99.1 img/s    2.0x (pairs 1.8-2.4)
    ================================  ============  ============  ====================

    i.e. 8.4x (pairs 7.5-9.6x) over the full-forward step with XLA's depthwise convolution that
    phase 2 used before. The one-time pass (256 images and their mirror images up to block14)
    took 11.9 s (30.0 s with "lax"), about 1.2 cached epochs. The cached step is not cheaper
    still because the top part includes the backward pass of three blocks.

    Args:
      model, variables: the network with its trained head (:func:`with_head`).
      train, val: :class:`jaxcnn.data.ArrayDataset` (uint8); ``val`` may be None.
      preprocess_fn: host uint8 batch -> float32 input (:func:`image_preprocess`).
      lr: peak AdamW learning rate (cosine decay): 10-100x below the head's.
      freeze_bn: keep BatchNorm statistics (see the module docstring for why).
      flip: random horizontal flips of the training images (on the host).
      eval_batch_size: batch of evaluation and of the one-time activation pass.
      cache_activations: run only the trainable top part per step (above); falls back to the
        full forward pass when that is not possible.
      cache_dir, cache_name: the activations are cached as ``<cache_dir>/<cache_name>-train-
        <hash>.npz`` (and ``-train-flipped``, ``-val``); None keeps them in memory only.

    Returns:
      ``(variables, history)`` with the history keys of :func:`train_head`.
    """
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    labels = freeze_labels(params, trainable)
    steps = len(train) // batch_size
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train)} training images")
    total = epochs * steps
    warmup = min(steps // 2, total - 1)
    schedule = (optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total) if warmup > 0
                else optax.cosine_decay_schedule(lr, total))
    tx = make_freezing_optimizer(optax.adamw(schedule, weight_decay=weight_decay), labels)
    opt_state = tx.init(params)
    start = split_point(model, params, trainable) if cache_activations and freeze_bn else None
    step = make_fine_tune_step(model, tx, labels, train.num_classes, freeze_bn=freeze_bn,
                               dropout=dropout, label_smoothing=label_smoothing,
                               class_weights=class_weights, start=start)
    if start is None:
        if progress and cache_activations:
            print("fine-tune: full forward pass per step (cached activations need a model "
                  "with a split forward and freeze_bn=True)")

        def train_inputs(idx, mirror):
            imgs = train.images[idx]
            if mirror is not None:
                imgs = np.where(mirror[:, None, None, None], imgs[:, :, ::-1], imgs)
            return preprocess_fn(imgs)

        eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False).astype(jnp.float32))
        eval_inputs, eval_prep = (None if val is None else val.images), preprocess_fn
    else:
        def acts(images, part, mirrored=False):
            return extract_activations(model, variables, images, preprocess_fn, start,
                                       eval_batch_size, flip=mirrored, cache_dir=cache_dir,
                                       name=f"{cache_name}-{part}", progress=progress)

        a_train = acts(train.images, "train")
        a_flip = acts(train.images, "train-flipped", True) if flip else None
        if progress:
            print(f"fine-tune: cached activations entering {model.module_names()[start]} "
                  f"{a_train.shape[1:]}; each step runs the top part only")

        def train_inputs(idx, mirror):
            if mirror is None:
                return a_train[idx]
            return np.where(mirror[:, None, None, None], a_flip[idx], a_train[idx])

        eval_fn = jax.jit(lambda v, h: model.apply(v, h, train=False, method=model.from_block,
                                                   start=start))
        eval_inputs, eval_prep = (None if val is None else acts(val.images, "val")), np.asarray
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(train))
        it = range(steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"fine-tune epoch {epoch + 1}/{epochs}", unit="step", leave=False)
        losses, accs, t0 = [], [], time.perf_counter()
        for s in it:
            idx = order[s * batch_size:(s + 1) * batch_size]
            mirror = rng.random(len(idx)) < 0.5 if flip else None
            params, batch_stats, opt_state, loss, acc = step(
                params, batch_stats, opt_state, jax.random.fold_in(key, epoch * steps + s),
                train_inputs(idx, mirror), train.labels[idx])
            losses.append(loss)
            accs.append(acc)
            if progress and s % 5 == 0:
                it.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(acc):.3f}",
                               img_s=f"{(s + 1) * batch_size / (time.perf_counter() - t0):.1f}")
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
               "train_accuracy": float(np.mean(jax.device_get(accs))),
               "lr": float(schedule(epoch * steps))}
        out = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        if val is not None:
            logits = _run_batched(eval_fn, out, eval_inputs, eval_prep, eval_batch_size)
            rec["eval_loss"] = float(_weighted_ce(jnp.asarray(logits), jnp.asarray(val.labels),
                                                  None, train.num_classes, 0.0))
            rec["eval_accuracy"] = float((logits.argmax(-1) == val.labels).mean())
        history.append(rec)
        if progress:
            print(json.dumps(rec))
    return jax.device_get(out), history


def predict_logits(model, variables, images_uint8, preprocess_fn, batch_size: int = 64):
    """(N, K) float32 logits of the full network in inference mode."""
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False).astype(jnp.float32))
    return _run_batched(forward, variables, images_uint8, preprocess_fn, batch_size)
