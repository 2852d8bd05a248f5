"""Parameter counts and a Keras-like layer table, computed from shapes only (no compile)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(tree) -> int:
    """Total number of scalars in a pytree of arrays (or ``jax.ShapeDtypeStruct``)."""
    return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree.leaves(tree)))


def check_input_shape(input_shape) -> tuple[int, ...]:
    """``input_shape`` as a tuple ``(N, H, W, C)`` of positive ints, or a ValueError."""
    shape = tuple(input_shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"input_shape must be (N, H, W, C) with positive ints, got {input_shape!r}; "
            "e.g. (1, 32, 32, 3)"
        )
    return shape


def init_shapes(model: nn.Module, input_shape: Sequence[int]):
    """Shapes of ``model.init(rng, x, train=False)`` for ``x`` of ``input_shape`` (N, H, W, C).

    Uses ``jax.eval_shape``: nothing is compiled or allocated. Returns a dict of
    ``jax.ShapeDtypeStruct`` trees (``params`` and, with BatchNorm, ``batch_stats``).
    """
    shape = check_input_shape(input_shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def param_counts(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``{"trainable": ..., "non_trainable": ..., "total": ...}`` for a model and input shape.

    ``trainable`` counts ``params``; ``non_trainable`` counts every other collection
    (BatchNorm running statistics), which Keras reports as non-trainable params.
    """
    variables = init_shapes(model, input_shape)
    trainable = count_params(variables.get("params", {}))
    total = count_params(variables)
    return {"trainable": trainable, "non_trainable": total - trainable, "total": total}


def _subtree(tree: Mapping, path: tuple[str, ...]):
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _shape_str(out) -> str:
    leaves = jax.tree.leaves(out)
    if len(leaves) == 1:
        return str(tuple(leaves[0].shape))
    return ", ".join(str(tuple(leaf.shape)) for leaf in leaves)


def summary(model: nn.Module, input_shape: Sequence[int]) -> str:
    """A table of layer path, output shape and parameter count, plus totals.

    Args:
      model: a Flax linen module following the project convention (``train`` keyword).
      input_shape: (N, H, W, C), e.g. ``(1, 32, 32, 3)``.

    Returns:
      A multi-line string. Rows list every submodule call in call order (nested modules
      indented, their params including their children's; ``(+n)`` are BatchNorm running
      statistics). Functional ops (``nn.max_pool``, reshape) have no row of their own; the next
      row's shape shows their effect. Computed under ``jax.eval_shape`` with
      ``nn.intercept_methods`` recording each module's output: nothing is compiled.
    """
    shape = check_input_shape(input_shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    calls: list[list] = []  # [path, output shapes], in the order the modules are entered

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not context.module.path:
            return next_fun(*args, **kwargs)
        record = [tuple(context.module.path), None]
        calls.append(record)
        out = next_fun(*args, **kwargs)
        record[1] = [tuple(leaf.shape) for leaf in jax.tree.leaves(out)]
        return out

    def run(x):
        with nn.intercept_methods(interceptor):
            return model.init_with_output(jax.random.key(0), x, train=False)

    out, variables = jax.eval_shape(run, x)
    params = variables.get("params", {})
    stats = {k: v for k, v in variables.items() if k != "params"}

    rows: list[tuple[str, str, str]] = [("input", str(shape), "")]
    for path, shapes in calls:
        n_params = count_params(_subtree(params, path) or {})
        n_stats = sum(count_params(_subtree(c, path) or {}) for c in stats.values())
        shape_text = str(shapes[0]) if len(shapes) == 1 else ", ".join(map(str, shapes or []))
        rows.append(
            (
                "  " * (len(path) - 1) + path[-1],
                shape_text,
                f"{n_params:,}" + (f" (+{n_stats:,})" if n_stats else ""),
            )
        )
    rows.append(("output", _shape_str(out), ""))

    trainable = count_params(params)
    non_trainable = count_params(stats)
    header = ("layer", "output shape", "params")
    w0, w1, w2 = (max(len(r[i]) for r in rows + [header]) for i in range(3))
    line = "-" * (w0 + w1 + w2 + 4)

    def fmt(r):
        return f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:>{w2}}".rstrip()

    body = [f"{type(model).__name__} on input {shape}", line, fmt(header), line]
    body += [fmt(r) for r in rows]
    body += [
        line,
        f"trainable params:     {trainable:,}",
        f"non-trainable params: {non_trainable:,} (BatchNorm running statistics)",
        f"total params:         {trainable + non_trainable:,}",
    ]
    return "\n".join(body)
