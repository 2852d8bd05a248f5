"""Lesson 2: a CNN built from nothing but the reference ops, trained by its hand-written backward.

    python -m experiments.from_scratch [--epochs 30] [--lr 3e-3] [--batch-size 32] [--seed 0]

The network is a handful of plain functions on a params pytree (no Flax):

    input 8x8x1 -> conv 3x3 (16) + ReLU -> max-pool 2 -> conv 3x3 (32) + ReLU -> max-pool 2
                -> flatten (128) -> dense (10)

Every convolution is ``ops.conv_reference``: windows gathered and multiplied by hand, and its
gradient comes from the backward pass written out in ``jaxcnn.ops.conv`` (a ``custom_vjp``),
not from XLA's autodiff of a convolution. Before training, the experiment checks that those
hand-written gradients equal ``jax.grad`` through XLA's ``ops.conv`` on one batch.

Data: scikit-learn's handwritten digits (1,797 real 8x8 scans, values 0..16; ships with
scikit-learn, no download), split 80/20 stratified with ``--seed``; the 20% is never trained on
and gives the held-out accuracy. A JSON summary goes to ``<workdir>/results.json``, figures to
``<workdir>/figures/`` (``--visuals-dir visuals/from_scratch`` rewrites the README's committed
ones instead).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _cli
from experiments._cli import add_common, make_parser, positive_float, positive_int

FIGURES = ("filters.png", "feature_maps.png", "training_curve.png", "predictions.png")
NUM_CLASSES = 10
STAGES = ("conv1+relu", "pool1", "conv2+relu", "pool2")
"""Names of the intermediate activations ``forward(..., return_stages=True)`` returns, in order."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_digits_split(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's digits as NHWC float32 in [0, 1], split stratified by class.

    Returns ``(x_train (N, 8, 8, 1), y_train (N,), x_test, y_test)``; labels are int32.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=seed)
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------------------------
# The model: plain functions on a params dict
# --------------------------------------------------------------------------------------------


def init_params(key, in_channels: int = 1, c1: int = 16, c2: int = 32, image_size: int = 8,
                num_classes: int = NUM_CLASSES) -> dict:
    """He-normal kernels (HWIO), zero biases. Two 2x2 poolings shrink the image by 4."""
    k1, k2, k3 = jax.random.split(key, 3)

    def he(k, shape, fan_in):
        return jax.random.normal(k, shape, jnp.float32) * jnp.sqrt(2.0 / fan_in)

    flat = (image_size // 4) ** 2 * c2
    return {
        "conv1": {"kernel": he(k1, (3, 3, in_channels, c1), 9 * in_channels),
                  "bias": jnp.zeros(c1)},
        "conv2": {"kernel": he(k2, (3, 3, c1, c2), 9 * c1), "bias": jnp.zeros(c2)},
        "dense": {"kernel": he(k3, (flat, num_classes), flat) / jnp.sqrt(2.0),
                  "bias": jnp.zeros(num_classes)},
    }


def relu(x):
    return jnp.maximum(x, 0.0)


def conv_layer(p, x, conv_fn):
    """``conv_fn(x, kernel, padding="SAME") + bias``; x: (N, H, W, C_in) -> (N, H, W, C_out)."""
    return conv_fn(x, p["kernel"], padding="SAME") + p["bias"]


def dense_layer(p, x):
    """x: (N, D) -> (N, D_out)."""
    return x @ p["kernel"] + p["bias"]


def forward(params, x, conv_fn=None, return_stages: bool = False):
    """Logits ``(N, 10)`` for ``x: (N, 8, 8, 1)``. ``conv_fn`` defaults to
    ``ops.conv_reference``; pass ``ops.conv`` to run the same network on XLA's convolution.
    With ``return_stages`` also returns the activations after each stage (a dict)."""
    from jaxcnn import ops

    conv_fn = ops.conv_reference if conv_fn is None else conv_fn
    stages = {}
    h = relu(conv_layer(params["conv1"], x, conv_fn))
    stages["conv1+relu"] = h
    h = ops.max_pool(h, 2)
    stages["pool1"] = h
    h = relu(conv_layer(params["conv2"], h, conv_fn))
    stages["conv2+relu"] = h
    h = ops.max_pool(h, 2)
    stages["pool2"] = h
    h = h.reshape(h.shape[0], -1)
    logits = dense_layer(params["dense"], h)
    return (logits, stages) if return_stages else logits


def loss_fn(params, x, y, conv_fn=None):
    """Mean softmax cross-entropy of integer labels ``y: (N,)``."""
    logits = forward(params, x, conv_fn)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def count_params(tree) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(tree)))


def shape_trace(params, image_shape=(8, 8, 1)) -> list[tuple[str, tuple, int]]:
    """``(stage, output shape (batch 1), params of that stage)`` for every stage."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    logits, stages = jax.eval_shape(partial(forward, return_stages=True), params, x)
    per = {"conv1+relu": count_params(params["conv1"]),
           "conv2+relu": count_params(params["conv2"])}
    rows = [("input", (1, *image_shape), 0)]
    rows += [(name, tuple(stages[name].shape), per.get(name, 0)) for name in STAGES]
    flat = int(np.prod(stages["pool2"].shape[1:]))
    rows.append(("flatten", (1, flat), 0))
    rows.append(("dense (logits)", tuple(logits.shape), count_params(params["dense"])))
    return rows


# --------------------------------------------------------------------------------------------
# Gradient check and training
# --------------------------------------------------------------------------------------------


def gradient_check(params, x, y) -> dict:
    """Hand-written backward (``conv_reference``) vs ``jax.grad`` through XLA's ``ops.conv``.

    Returns the max absolute difference over all parameters, the max |grad|, and their ratio.
    """
    from jaxcnn import ops

    # a fresh jit per call: conv_fn is static, and ops.conv_reference is looked up at trace time
    grad = jax.jit(jax.grad(loss_fn), static_argnums=3)
    g_ref = grad(params, x, y, ops.conv_reference)
    g_lax = grad(params, x, y, ops.conv)
    diffs = jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), g_ref, g_lax)
    max_diff = float(max(jax.tree_util.tree_leaves(diffs)))
    max_grad = float(max(jnp.max(jnp.abs(g)) for g in jax.tree_util.tree_leaves(g_lax)))
    per_leaf = {"/".join(str(getattr(k, "key", k)) for k in path): float(v)
                for path, v in jax.tree_util.tree_flatten_with_path(diffs)[0]}
    return {"max_abs_diff": max_diff, "max_abs_grad": max_grad,
            "relative": max_diff / max(max_grad, 1e-30), "per_param": per_leaf}


def make_train_step(optimizer, conv_fn=None):
    """A jitted ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""
    import optax

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, conv_fn)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


@jax.jit
def _predict(params, x):
    return jnp.argmax(forward(params, x), axis=-1)


def accuracy(params, x, y, batch: int = 512) -> float:
    preds = np.concatenate([np.asarray(_predict(params, x[i:i + batch]))
                            for i in range(0, len(x), batch)])
    return float(np.mean(preds == y))


def train(params, data, *, epochs: int, lr: float, batch_size: int, seed: int,
          progress: bool = True):
    """Adam on shuffled mini-batches (last partial batch dropped, so one compiled shape).

    Returns ``(params, history)``; history holds per-epoch mean loss, train and held-out
    accuracy, and images/s. ``progress``: a tqdm bar; without it, one printed line per epoch.
    """
    import optax
    from tqdm.auto import tqdm

    x_tr, y_tr, x_te, y_te = data
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    steps = len(x_tr) // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the training split "
                         f"({len(x_tr)} images)")
    # compile before the clock starts, so images/s measures training, not XLA
    step = make_train_step(optimizer).lower(params, opt_state, x_tr[:batch_size],
                                            y_tr[:batch_size]).compile()
    rng = np.random.default_rng(seed)
    history = {"loss": [], "train_acc": [], "test_acc": [], "images_per_s": []}
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        order = rng.permutation(len(x_tr))
        t0 = time.perf_counter()
        losses = []
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            params, opt_state, loss = step(params, opt_state, x_tr[idx], y_tr[idx])
            losses.append(loss)
        epoch_loss = float(np.mean(jax.device_get(losses)))
        ips = steps * batch_size / (time.perf_counter() - t0)
        history["loss"].append(epoch_loss)
        history["train_acc"].append(accuracy(params, x_tr, y_tr))
        history["test_acc"].append(accuracy(params, x_te, y_te))
        history["images_per_s"].append(ips)
        bar.set_postfix(loss=f"{epoch_loss:.4f}", train=f"{history['train_acc'][-1]:.3f}",
                        held_out=f"{history['test_acc'][-1]:.3f}", img_s=f"{ips:,.0f}")
        if not progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {epoch_loss:.4f}, train acc "
                  f"{history['train_acc'][-1]:.3f}, held-out acc {history['test_acc'][-1]:.3f}, "
                  f"{ips:,.0f} img/s", flush=True)
    return params, history


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def write_figures(params, history, data, visuals_dir: Path, dpi: int = 150) -> list[Path]:
    from jaxcnn.viz import lessons
    from jaxcnn.viz.style import save_figure

    _, _, x_te, y_te = data
    visuals_dir = Path(visuals_dir)
    out = []
    out.append(save_figure(lessons.learned_filters(
        np.asarray(params["conv1"]["kernel"]),
        "Learned first-layer 3x3 filters (16, trained on digits)"),
        visuals_dir / FIGURES[0], dpi=dpi))
    _, stages = forward(params, jnp.asarray(x_te[:1]), return_stages=True)
    out.append(save_figure(lessons.feature_maps(
        x_te[0, :, :, 0], {k: np.asarray(stages[k][0]) for k in STAGES},
        label=f"(label {int(y_te[0])})"), visuals_dir / FIGURES[1], dpi=dpi))
    out.append(save_figure(lessons.training_curve(history), visuals_dir / FIGURES[2], dpi=dpi))
    preds = np.asarray(_predict(params, jnp.asarray(x_te)))
    wrong = np.flatnonzero(preds != y_te)[:10]
    right = np.flatnonzero(preds == y_te)[: 40 - len(wrong)]
    show = np.sort(np.concatenate([wrong, right]))
    n_wrong = int((preds != y_te).sum())
    title = f"Held-out digits: {len(y_te) - n_wrong}/{len(y_te)} correct"
    if n_wrong:
        title += (f"; {'all ' if len(wrong) == n_wrong else ''}{len(wrong)} mistakes shown, "
                  "framed in red as 'predicted (true)'")
    out.append(save_figure(lessons.prediction_grid(x_te[show, :, :, 0], y_te[show], preds[show],
                                                   title=title),
                           visuals_dir / FIGURES[3], dpi=dpi))
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser():
    parser = make_parser(
        "from_scratch",
        "Train a small CNN made only of ops.conv_reference, max pooling, ReLU and a dense layer "
        "(plain functions, no Flax) on scikit-learn's 8x8 handwritten digits, using the "
        "hand-written convolution backward pass.",
    )
    parser.add_argument("--epochs", type=positive_int, default=30,
                        help="passes over the training split")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="images per training step")
    add_common(parser, "from_scratch")
    parser.add_argument("--dpi", type=positive_int, default=150,
                        help="resolution of the saved PNG figures")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip writing the figures")
    _cli.add_progress(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    data = load_digits_split(args.seed)
    x_tr, y_tr, x_te, y_te = data
    _cli.check_batch_size(args.batch_size, len(x_tr))
    print(f"digits: {len(x_tr)} train / {len(x_te)} held-out images, shape {x_tr.shape[1:]}, "
          f"stratified split (seed {args.seed})")

    params = init_params(jax.random.key(args.seed))
    print("\narchitecture (every conv is ops.conv_reference):")
    print(f"{'stage':<16}{'output shape':>18}{'params':>10}")
    for name, shape, n in shape_trace(params):
        print(f"{name:<16}{str(shape):>18}{n:>10,}")
    total = count_params(params)
    print(f"{'total':<16}{'':>18}{total:>10,}")

    check = gradient_check(params, jnp.asarray(x_tr[:args.batch_size]),
                           jnp.asarray(y_tr[:args.batch_size]))
    ok = check["relative"] <= 1e-5
    print(f"\ngradient check on one batch of {args.batch_size}: hand-written backward vs "
          f"jax.grad through lax conv: max |diff| = {check['max_abs_diff']:.2e} "
          f"(max |grad| {check['max_abs_grad']:.2e}, relative {check['relative']:.2e}) "
          f"-> {'OK' if ok else 'MISMATCH'} (bar 1e-5)")

    print(f"\ntraining {args.epochs} epochs, Adam lr {args.lr}, batch {args.batch_size}")
    params, history = train(params, data, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, seed=args.seed,
                            progress=args.progress)
    test_acc = history["test_acc"][-1]
    n_right = round(test_acc * len(y_te))
    print(f"\nheld-out accuracy: {100 * test_acc:.2f}% ({n_right}/{len(y_te)}); "
          f"train accuracy {100 * history['train_acc'][-1]:.2f}%; "
          f"{'meets' if test_acc >= 0.95 else 'MISSES'} the 95% bar")

    figures = (write_figures(params, history, data, _cli.figures_dir(args), args.dpi)
               if args.figures else [])
    elapsed = time.perf_counter() - t_start
    result = {
        "experiment": "from_scratch",
        "dataset": "sklearn digits 8x8", "train_images": len(x_tr), "test_images": len(x_te),
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
        "params": total, "test_accuracy": test_acc,
        "train_accuracy": history["train_acc"][-1], "gradient_check": check,
        "history": history, "seconds": elapsed, "backend": jax.default_backend(),
        "figures": [str(p) for p in figures],
    }
    out = _cli.write_json(args.workdir / "results.json", result)
    print(f"results: {out}")
    for p in figures:
        print(f"figure:  {p}")
    print(f"total time {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    _cli.run(main)
