"""Which kernels compute the layers: one setting, read when a model is traced.

The course's models describe only the network (``Conv -> BatchNorm -> ReLU -> MaxPool``);
the layers in :mod:`jaxcnn.models.layers` ask this module which kernels to run. Every backend
computes the same function with the same parameters (tested layer by layer and model by model):

* ``"lax"``: ``lax.conv_general_dilated``, ``nn.BatchNorm``, ``nn.max_pool`` and XLA's own
  gradients. The fast path on GPU and TPU.
* ``"fast"``: pure JAX with hand-written backward passes that suit XLA:CPU: the convolution's
  kernel gradient as one GEMM (:mod:`jaxcnn.ops.fast_conv`), BatchNorm+ReLU as one op
  (:mod:`jaxcnn.ops.batchnorm`), the 2x2 max pool's gradient as a mask, depthwise
  convolutions as shifted multiply-adds.
* ``"onednn"``: as ``"fast"``, with the convolutions in Intel's oneDNN and BatchNorm+ReLU
  (+ a following 2x2 max pool) in small C++ kernels (:mod:`jaxcnn.ops.onednn`; the
  ``jaxcnn[onednn]`` extra, built on first use). float32 on the CPU (bfloat16 products under
  ``jax.default_matmul_precision("bfloat16")`` where the CPU has them); elsewhere its layers
  fall back to ``"fast"``.
* ``"auto"`` (the default): ``"onednn"`` on the CPU where the extra is installed and usable,
  else ``"fast"`` there; ``"lax"`` on GPU and TPU.

The setting, in order of precedence: :func:`use` (a context manager, also
``FitConfig(backend=...)``, which ``fit`` enters for its whole run), else the environment
variable ``JAXCNN_BACKEND``, else ``"auto"``. It is read when a function is traced, so choose it
before the first call of a jit-compiled function: a compiled function keeps the kernels it was
traced with. Nothing here changes process-wide state.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

__all__ = ["BACKENDS", "ENV_VAR", "resolve", "selected", "use"]

BACKENDS = ("auto", "lax", "fast", "onednn")

ENV_VAR = "JAXCNN_BACKEND"

_setting: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxcnn_backend",
                                                                      default=None)


def _check(name, where: str) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(
            f"{where}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}"
        )
    return name.strip().lower()


def selected() -> str:
    """The backend asked for: the innermost :func:`use`, else ``$JAXCNN_BACKEND``, else
    ``"auto"`` (possibly ``"auto"``; :func:`resolve` turns it into a concrete one)."""
    name = _setting.get()
    if name is not None:
        return name
    env = os.environ.get(ENV_VAR, "").strip()
    return _check(env, ENV_VAR) if env else "auto"


def resolve(name: str | None = None) -> str:
    """The concrete backend (``"lax"``, ``"fast"`` or ``"onednn"``) for ``name`` (default:
    :func:`selected`). ``"auto"`` looks at the default JAX backend and at whether the oneDNN
    kernels are usable here (``JAXCNN_ONEDNN=0`` says they are not)."""
    name = selected() if name is None else _check(name, "backend")
    if name != "auto":
        return name
    import jax

    if jax.default_backend() != "cpu":
        return "lax"
    from jaxcnn.ops import onednn

    return "onednn" if onednn.available() else "fast"


@contextlib.contextmanager
def use(name: str):
    """Run the block with backend ``name`` (one of :data:`BACKENDS`)::

        with jaxcnn.ops.backend.use("lax"):
            logits = model.apply(variables, x)   # traced (and compiled) with XLA's own kernels
    """
    token = _setting.set(_check(name, "use"))
    try:
        yield resolve()
    finally:
        _setting.reset(token)
