"""Looking inside a model: its first convolution's filters, every convolution's output for a few
images, and the gradient that reaches every convolution's kernel."""

from __future__ import annotations

import re

import numpy as np

from jaxcnn.evaluate.prediction import _stats_arrays, normalize_on_device

__all__ = ["conv_activations", "conv_grad_norms", "conv_layer_paths", "first_conv_kernel"]


def _conv_types() -> tuple[type, ...]:
    """The convolution modules: flax's and jaxcnn's (fast CPU) layers."""
    import flax.linen as nn

    from jaxcnn.models.layers import Conv, DepthwiseConv

    return (nn.Conv, Conv, DepthwiseConv)


def first_conv_kernel(variables) -> np.ndarray:
    """The first convolution's kernel ``(kh, kw, C_in, C_out)`` of a model.

    The first layer is the one that reads the image, so among all 4-D ``kernel`` leaves the one
    with the fewest input channels wins (image channels, 1 or 3, are fewer than any hidden
    width); ties are broken by the layer path in natural order (``Conv_2`` before ``Conv_10``).
    Dict order is not used: jit and checkpoint restores return keys sorted.

    Args:
      variables: ``{"params": ...}`` (``state.variables`` of a ``TrainState``) or the params
        tree itself.

    Raises:
      ValueError: the model has no 4-D kernel (e.g. an MLP).
    """
    tree = variables.get("params", variables) if hasattr(variables, "get") else variables
    found: list[tuple[str, object]] = []

    def walk(node, prefix):
        if hasattr(node, "items"):
            for key, value in node.items():
                path = f"{prefix}/{key}"
                if key == "kernel" and len(getattr(value, "shape", ())) == 4:
                    found.append((path, value))
                else:
                    walk(value, path)

    walk(tree, "")
    if not found:
        raise ValueError(
            "no 4-D convolution kernel found in the params; first-layer filters exist only for "
            "convolutional models (e.g. cnn3, not mlp)"
        )

    def natural(path: str):
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]

    _, kernel = min(found, key=lambda item: (item[1].shape[2], natural(item[0])))
    return np.asarray(kernel)


def conv_activations(model, variables, images_uint8, *, mean, std) -> dict[str, np.ndarray]:
    """Outputs of every convolution layer (``nn.Conv``, ``layers.Conv``, ``layers.DepthwiseConv``)
    of ``model`` for a few images (inference mode).

    Args:
      model: a Flax linen module following the jaxcnn convention.
      variables: its variables.
      images_uint8: uint8 ``(N, H, W, C)`` (keep N small: all activations are returned).
      mean, std: normalisation on the [0, 1] scale.

    Returns:
      ``{"Conv_0": (N, H', W', C'), ...}`` float32 numpy, in the order the layers ran; the
      key is the module path joined with ``/``.
    """
    conv_types = _conv_types()
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"images_uint8 must be uint8 (N, H, W, C), got {images.dtype} {images.shape}"
        )
    x = normalize_on_device(images, *_stats_arrays(mean, std))
    _, state = model.apply(
        variables,
        x,
        train=False,
        capture_intermediates=lambda mdl, method: isinstance(mdl, conv_types)
        and method == "__call__",
        mutable=["intermediates"],
    )
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if key == "__call__":
                out[prefix] = np.asarray(value[0], np.float32)
            elif hasattr(value, "items"):
                walk(value, f"{prefix}/{key}" if prefix else key)

    walk(state.get("intermediates", {}), "")
    if not out:
        raise ValueError(f"{type(model).__name__} has no convolution layer to capture")
    return out


def conv_layer_paths(model, variables, x) -> list[tuple[str, ...]]:
    """Module paths of the model's convolutions in the order the forward pass runs them.

    Found by intercepting module calls during an abstract forward pass (``jax.eval_shape``:
    nothing is computed), so the order is the data-flow order, not the (alphabetical) order of
    the parameter dict. A projection shortcut appears after its block's convs. Each path is the
    key path of the layer's ``kernel`` under ``params`` (without "kernel").

    Args:
      model, variables: a Flax linen module following the jaxcnn convention and its variables
        (arrays or ``jax.ShapeDtypeStruct`` s).
      x: an input batch ``(N, H, W, C)`` (only its shape and dtype are used).
    """
    import flax.linen as nn
    import jax

    conv_types = _conv_types()
    order: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, conv_types):
            path = tuple(context.module.path)
            if path not in order:
                order.append(path)
        return next_fun(*args, **kwargs)

    def forward(v, xx):
        with nn.intercept_methods(interceptor):
            return model.apply(v, xx, train=False)

    jax.eval_shape(forward, variables, x)
    return order


def conv_grad_norms(model, variables, images, labels, *, seed: int = 0):
    """Frobenius norm of dL/dkernel for every conv, in depth order, on one batch.

    The loss is the mean softmax cross-entropy in training mode (BatchNorm uses the batch's
    statistics, as in a training step); nothing is updated.

    Args:
      model: a ``jaxcnn.models`` module.
      variables: ``{"params": ..., ["batch_stats": ...]}``.
      images: ``(N, H, W, C)`` float32, already normalised.
      labels: ``(N,)`` int class indices.
      seed: dropout key (models with dropout run it, as in training).

    Returns:
      ``[(name, norm), ...]``, ``name`` the conv's module path joined with "/".
    """
    import jax
    import jax.numpy as jnp
    import optax

    x = jnp.asarray(images, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    paths = conv_layer_paths(model, variables, x[:1])
    if not paths:
        raise ValueError(f"{type(model).__name__} has no convolution layers")
    others = {k: v for k, v in variables.items() if k != "params"}

    @jax.jit
    def grads_of(params):
        def loss_fn(p):
            out = model.apply({"params": p, **others}, x, train=True,
                              rngs={"dropout": jax.random.key(seed)},
                              mutable=list(others) or False)
            logits = out[0] if isinstance(out, tuple) else out
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.grad(loss_fn)(params)

    def kernel(tree, path):
        for key in path:
            tree = tree[key]
        return tree["kernel"]

    grads = grads_of(variables["params"])
    return [("/".join(p), float(jnp.linalg.norm(kernel(grads, p)))) for p in paths]
