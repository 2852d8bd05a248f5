"""``save`` and ``load``: check that the variables fit the model the bundle describes, write
them as float32 host arrays, and rebuild the model from ``bundle.json`` on load."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn.distributed import is_primary, sync
from jaxcnn.evaluate.tta import check_tta_mode
from jaxcnn.export import format as fmt
from jaxcnn.export.bundle import DEFAULT_BATCH_SIZE, Bundle


def _flat_shapes(tree) -> dict[str, tuple]:
    flat = traverse_util.flatten_dict(flax.serialization.to_state_dict(tree), sep="/")
    return {k: tuple(np.shape(v)) for k, v in flat.items()}


def _check_variables(variables, template, model_name: str) -> None:
    """Raise ValueError unless ``variables`` has exactly the leaves and shapes of ``template``."""
    got, want = _flat_shapes(variables), _flat_shapes(template)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if wrong:
            parts.append(
                "wrong shapes "
                + ", ".join(f"{k}: {got[k]} (expected {want[k]})" for k in wrong[:5])
            )
        raise ValueError(
            f"variables do not fit model {model_name!r} with these options, num_classes and "
            f"input size: {'; '.join(parts)}"
        )


def _build(model_name: str, num_classes: int, options: dict, input_shape: tuple):
    """Create the model and the shapes of its variables, without running or compiling it."""
    from jaxcnn import models

    model = models.create(model_name, num_classes=num_classes, **options)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    template = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), template, x)
    if tuple(out.shape) != (1, num_classes):
        raise ValueError(
            f"model {model_name!r} gives outputs of shape {tuple(out.shape)} for a "
            f"{input_shape} input; expected (1, {num_classes}) logits"
        )
    return model, template


def _to_host(variables):
    """Variables as a plain dict of host numpy arrays; floating leaves become float32."""

    def convert(a):
        a = np.asarray(jax.device_get(a))
        return a.astype(np.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(convert, flax.serialization.to_state_dict(variables))


def save(
    path,
    *,
    model_name: str,
    model_options: dict | None,
    variables,
    class_names: Sequence[str],
    preprocessing: dict,
    metrics: dict | None = None,
    tta: str = "none",
) -> Path:
    """Write a self-contained model bundle directory at ``path`` (atomically).

    Args:
      path: the bundle directory (created; an existing bundle there is replaced). In a
        multi-process run (:mod:`jaxcnn.distributed`) every process calls ``save`` with the
        same arguments; process 0 writes, and all return once it is written.
      model_name: a name registered in ``jaxcnn.models`` (e.g. ``"cnn3"``).
      model_options: keyword options for ``jaxcnn.models.create`` (numbers, strings, dtypes,
        tuples); ``num_classes`` comes from ``class_names``.
      variables: ``{"params": ..., "batch_stats": ...}`` as returned by ``model.init``/training.
      class_names: ``K`` unique names, index ``i`` naming logit ``i``.
      preprocessing: ``dict(input_size=(H, W), mean=(...), std=(...))`` (mean/std per channel on
        the [0, 1] scale; optional ``channels``, default ``len(mean)``); extra keys are kept.
      metrics: optional JSON-friendly dict of figures of merit (e.g. test accuracy).
      tta: the test-time augmentation the loaded bundle's ``predict`` applies, one of
        ``jaxcnn.evaluate.TTA_MODES``; store the mode the reported accuracy was measured with,
        so the bundle reproduces it.

    Returns:
      The bundle directory as a ``Path``.

    Raises:
      ValueError: unknown model, unserialisable options, variables that do not fit the model,
        bad preprocessing, class names or TTA mode, or ``path`` holding something that is not
        a bundle.
    """
    path = Path(path)
    check_tta_mode(tta)
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a registered model name, got {model_name!r}")
    options = dict(model_options or {})
    if "num_classes" in options:
        raise ValueError("model_options must not contain num_classes; it is len(class_names)")
    encoded_options = fmt.encode_option(options, "model_options")
    names = fmt.check_class_names(class_names)
    prep = fmt.check_preprocessing(preprocessing)
    input_shape = (*prep["input_size"], prep["channels"])

    _, template = _build(model_name, len(names), fmt.decode_option(encoded_options), input_shape)
    _check_variables(variables, template, model_name)
    host = _to_host(variables)

    import jaxcnn

    info = {
        "format_version": fmt.FORMAT_VERSION,
        "model_name": model_name,
        "model_options": encoded_options,
        "num_classes": len(names),
        "class_names": names,
        "preprocessing": prep,
        "metrics": metrics or {},
        "tta": tta,
        "jaxcnn_version": jaxcnn.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        text = json.dumps(info, indent=2, default=fmt.json_default, allow_nan=True)
    except TypeError as err:
        raise ValueError(f"metrics or preprocessing are not JSON serialisable: {err}") from err
    payload = flax.serialization.to_bytes(host)
    if is_primary():  # several processes: one copy, by process 0, read by all after the sync
        fmt.write_atomic(path, {fmt.VARIABLES_FILE: payload, fmt.BUNDLE_JSON: text.encode()})
    sync(f"jaxcnn.export.save {path}")
    return path


def load(path, *, batch_size: int = DEFAULT_BATCH_SIZE, tta: str | None = None) -> Bundle:
    """Read a bundle written by ``save`` and rebuild its model.

    Args:
      path: the bundle directory (or its ``bundle.json``).
      batch_size: fixed batch size of the bundle's jitted forward.
      tta: None: predict with the TTA mode stored in the bundle (``"none"`` for bundles
        without one); a mode of ``jaxcnn.evaluate.TTA_MODES`` overrides it.

    Returns:
      A ``Bundle`` ready to ``predict``.

    Raises:
      FileNotFoundError: the directory, ``bundle.json`` or ``variables.msgpack`` is missing.
      ValueError: unreadable files, a different format version, variables that do not fit
        the model described in ``bundle.json``, or an unknown TTA mode.
    """
    if tta is not None:
        check_tta_mode(tta)
    path = fmt.bundle_dir(path)
    info, fields = fmt.read_info(path)
    json_path, var_path = path / fmt.BUNDLE_JSON, path / fmt.VARIABLES_FILE
    model_name, prep = fields["model_name"], fields["preprocessing"]
    input_shape = (*prep["input_size"], prep["channels"])
    model, template = _build(
        model_name, len(fields["class_names"]), fields["model_options"], input_shape
    )
    try:
        restored = flax.serialization.from_bytes(template, var_path.read_bytes())
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{var_path} does not hold variables for model {model_name!r} as described in "
            f"{json_path}: {err}"
        ) from err
    _check_variables(restored, template, model_name)
    variables = jax.tree.map(lambda a, t: jnp.asarray(a, dtype=t.dtype), restored, template)
    return Bundle(
        path=path,
        info=info,
        model=model,
        variables=variables,
        class_names=fields["class_names"],
        preprocessing=prep,
        model_options=fields["model_options"],
        batch_size=batch_size,
        tta=fields["tta"] if tta is None else tta,
    )
