"""Tracing a model for ``python -m experiments.bench layers``: its convolutions (grouped by
shape) and the other parts of its forward pass (BatchNorm, pooling, dropout, dense layers).

Everything is found without computing anything: ``jax.eval_shape`` of ``model.init`` with
``nn.intercept_methods`` on the module calls, and the pooling functions (not modules) wrapped
while it runs. Trace inside ``jaxcnn.ops.backend.use(...)``: the layers pick their kernels (and
so which parts they run) from it, and each conv shape records the kernels that compute it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution as a model runs it: x (n, h, w, c_in) * kernel (kh, kw, c_in, c_out),
    ``stride`` (sh, sw), explicit ``pads`` ((top, bottom), (left, right)) -> (n, ho, wo,
    c_out), computed by the kernels of backend ``impl`` ("lax", "fast" or "onednn")."""

    n: int
    h: int
    w: int
    c_in: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    ho: int
    wo: int
    impl: str

    @property
    def flops(self) -> int:
        """FLOPs of the forward pass, and of each gradient: 2*N*Ho*Wo*kh*kw*Cin*Cout (padded
        taps included)."""
        return 2 * self.n * self.ho * self.wo * self.kh * self.kw * self.c_in * self.c_out

    def to_dict(self) -> dict:
        return {"in": [self.h, self.w, self.c_in], "out": [self.ho, self.wo, self.c_out],
                "kernel": [self.kh, self.kw], "stride": list(self.stride),
                "pads": [list(p) for p in self.pads], "impl": self.impl}


@dataclasses.dataclass
class LayerGroup:
    """The conv layers of one model that share a ``ConvShape``: their names (module paths) and
    whether they read the model's input (the data: the step needs no input gradient there)."""

    shape: ConvShape
    names: list[str]
    reads_data: bool = False

    @property
    def count(self) -> int:
        return len(self.names)


@dataclasses.dataclass
class Part:
    """A distinct non-conv piece of the forward pass (``kind``: "batchnorm", "batchnorm_pool",
    "maxpool", "dropout" or "dense"): its input shape, the layers that run it, and ``layer``:
    an unbound Flax module or ``x -> y``."""

    kind: str
    in_shape: tuple[int, ...]
    names: list[str]
    layer: Any

    @property
    def count(self) -> int:
        return len(self.names)


def _conv_types() -> tuple[type, ...]:
    import flax.linen as nn

    from jaxcnn.models.layers import Conv

    return (Conv, nn.Conv)


def _conv_shape(module, x_shape, y_shape) -> ConvShape | None:
    """The ``ConvShape`` of a ``Conv`` / ``nn.Conv`` call on x (N, H, W, C) giving y (N, Ho,
    Wo, O); None for grouped, dilated, circular or non-2-D convolutions (left in "rest")."""
    from jaxcnn.ops.fast_conv import resolve_padding

    if len(x_shape) != 4 or getattr(module, "feature_group_count", 1) != 1:
        return None
    if any(d != 1 for d in np.ravel(getattr(module, "kernel_dilation", None) or 1)):
        return None
    ks = module.kernel_size
    kh, kw = (ks, ks) if isinstance(ks, int) else tuple(ks)
    s = module.strides or 1
    stride = (s, s) if isinstance(s, int) else tuple(s)
    try:
        pads = resolve_padding(module.padding, x_shape[1:3], (kh, kw), stride)
    except ValueError:  # e.g. nn.Conv's "CIRCULAR"
        return None
    n, h, w, c_in = (int(d) for d in x_shape)
    return ConvShape(n, h, w, c_in, int(y_shape[-1]), kh, kw, stride, pads,
                     int(y_shape[1]), int(y_shape[2]), _conv_kernels(module))


def _conv_kernels(module) -> str:
    """The backend whose kernels compute ``module``: ``nn.Conv`` is always lax;
    ``layers.Conv`` follows :func:`jaxcnn.ops.backend.resolve`."""
    from jaxcnn.models.layers import Conv
    from jaxcnn.ops import backend

    return backend.resolve() if isinstance(module, Conv) else "lax"


def _module_part(module) -> tuple[str, tuple] | None:
    """``(kind, distinguishing attributes)`` of a BatchNorm / Dropout / Dense call, else None.
    ``layers.FusedBatchNorm`` includes its ReLU, and with ``pool`` its max pool
    ("batchnorm_pool"); ``native``: in C++."""
    import flax.linen as nn

    from jaxcnn.models.layers import FusedBatchNorm

    if isinstance(module, FusedBatchNorm):
        return ("batchnorm_pool" if module.pool else "batchnorm"), (module.relu, module.gelu,
                                                                   module.native)
    if isinstance(module, nn.BatchNorm):
        return "batchnorm", ()
    if isinstance(module, nn.Dropout) and module.rate > 0:
        return "dropout", (module.rate,)
    if isinstance(module, nn.Dense):
        return "dense", (module.features, module.use_bias)
    return None


def _path(module) -> str:
    scope = getattr(module, "scope", None)
    return "/".join(scope.path) if scope is not None else type(module).__name__


def _pool_functions() -> list[tuple[Any, str]]:
    """``(namespace, name)`` of the max-pooling functions the models' layers call: flax's
    ``nn.max_pool`` and :func:`jaxcnn.ops.pool.max_pool_2x2` as ``jaxcnn.models.layers`` holds
    it (its ``max_pool_2x2`` and ``batch_norm`` call one of them, as the backend says)."""
    import flax.linen as nn

    from jaxcnn.models import layers
    from jaxcnn.ops.pool import max_pool_2x2

    return [(nn, "max_pool")] + [(layers, name) for name, value in vars(layers).items()
                                 if value is max_pool_2x2]


@contextlib.contextmanager
def _recording_pools(record: Callable) -> Iterator[None]:
    """While active, max-pooling calls (:func:`_pool_functions`) are recorded as
    ``record("maxpool", x_shape, call, name, fn)``: pooling is a function, not a module, so
    ``nn.intercept_methods`` does not see it."""
    from unittest import mock

    calls = []

    def recording(original, label):
        def pool(x, *args, **kwargs):
            calls.append(None)
            call = (label, repr(args), repr(sorted(kwargs.items())))
            record("maxpool", tuple(x.shape), call, f"{label}#{len(calls)}",
                   lambda v: original(v, *args, **kwargs))
            return original(x, *args, **kwargs)

        return pool

    with contextlib.ExitStack() as stack:
        for namespace, name in _pool_functions():
            original = getattr(namespace, name)
            stack.enter_context(mock.patch.object(namespace, name, recording(original, name)))
        yield


def trace_model(model, input_shape: tuple[int, ...]) -> tuple[list[LayerGroup], list[Part]]:
    """The conv layers (grouped by shape, in order of first use) and the other parts of one
    train-mode forward pass of ``model`` on x ``input_shape`` (N, H, W, C), found without
    computing anything (``jax.eval_shape`` of ``model.init``), with the kernels of the
    backend in effect (:func:`jaxcnn.ops.backend.use`)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    groups: dict[ConvShape, LayerGroup] = {}
    parts: dict[tuple, Part] = {}
    model_input = []

    def record(kind, in_shape, attrs, name, layer):
        key = (kind, in_shape, attrs)
        if key not in parts:
            parts[key] = Part(kind, in_shape, [], layer)
        parts[key].names.append(name)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module, x = context.module, args[0] if args else None
        if context.method_name != "__call__" or not hasattr(x, "shape"):
            return out
        if isinstance(module, _conv_types()):
            shape = _conv_shape(module, tuple(x.shape), tuple(out.shape))
            if shape is not None:
                group = groups.setdefault(shape, LayerGroup(shape, []))
                group.names.append(_path(module))
                group.reads_data |= x is model_input[0]
        elif (kind := _module_part(module)) is not None:
            record(kind[0], tuple(x.shape), kind[1], _path(module),
                   module.clone(parent=None, name=None))
        return out

    def init(x):
        model_input.append(x)
        keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        return model.init(keys, x, train=True)

    with nn.intercept_methods(interceptor), _recording_pools(record):
        jax.eval_shape(init, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return list(groups.values()), list(parts.values())
