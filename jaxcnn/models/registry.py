"""A name -> factory registry for models: ``create("cnn3", num_classes=10, dtype=jnp.bfloat16)``.

A factory is any callable ``factory(num_classes, **options) -> flax.linen.Module``. Register one
with the decorator ``@register("name")`` (a Module class works too: it is called with
``num_classes=`` and the options as keyword arguments).

Every registered model follows the project convention:

* ``variables = model.init(rng, x, train=False)`` with ``x`` float ``(N, H, W, C)``;
* ``model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])``
  when training a model with BatchNorm (``mutable`` only where ``batch_stats`` exist);
* ``variables`` hold ``params`` and, where BatchNorm is used, ``batch_stats``;
* a ``dtype`` option sets the compute dtype (e.g. ``jnp.bfloat16``); params stay float32 and
  the logits returned are float32 ``(N, num_classes)``;
* ``model.apply(variables, x, train=False, return_features=True)`` (or
  ``method="features"``) gives the representation just before the classifier;
* the final classifier layer is a ``nn.Dense`` named ``head`` (so transfer learning can swap it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import flax.linen as nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(num_classes, **options) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(
                f"model name {name!r} is already registered to {_REGISTRY[name]!r}; "
                "choose another name"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_variant(
    name: str, cls: type[nn.Module], doc: str, options: Sequence[str], **fixed
) -> ModelFactory:
    """Register ``name`` as ``cls`` with some attributes ``fixed`` (a family member: its depth,
    its stages) and the attributes named in ``options`` left to the caller.

    The factory's signature is ``(num_classes, *options)`` with ``cls``'s defaults, so
    :func:`accepted_options` lists exactly ``options``; ``doc`` becomes its docstring. Returns
    the factory (bind it to the member's name in its module).
    """
    fields = cls.__dataclass_fields__
    unknown = sorted({"num_classes", *options, *fixed} - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no attribute(s) {unknown}")
    signature = inspect.Signature(
        [
            inspect.Parameter(f, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=fields[f].default)
            for f in ("num_classes", *options)
        ],
        return_annotation=cls,
    )

    def factory(*args, **kwargs):
        return cls(**fixed, **signature.bind(*args, **kwargs).arguments)

    factory.__signature__ = signature
    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = cls.__module__
    factory.__doc__ = doc
    return register(name)(factory)


def available() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _accepted_options(factory: ModelFactory) -> list[str] | None:
    """Keyword options a factory accepts, or None when it takes ``**kwargs``."""
    target = factory
    if inspect.isclass(factory) and issubclass(factory, nn.Module):
        fields = getattr(factory, "__dataclass_fields__", {})
        return sorted(f for f in fields if f not in ("parent", "name", "num_classes"))
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.name != "num_classes")


def _factory(name: str) -> ModelFactory:
    """The registered factory of ``name``, or a ValueError listing the available models."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return _REGISTRY[name]


def accepted_options(name: str) -> list[str] | None:
    """The keyword options ``create(name, ...)`` accepts (sorted, ``num_classes`` aside), or
    None when the model's factory takes any (``**kwargs``)."""
    return _accepted_options(_factory(name))


def supported_options(name: str, options: dict) -> dict:
    """The entries of ``options`` that ``create(name, ...)`` accepts (all of them when its
    factory takes ``**kwargs``): for options meant for some models of a list, e.g.
    ``zero_init_residual`` for the residual nets and not their plain twins."""
    accepted = accepted_options(name)
    return {k: v for k, v in options.items() if accepted is None or k in accepted}


def create(name: str, num_classes: int = 10, **options) -> nn.Module:
    """Build a registered model.

    Args:
      name: a name from ``available()``, e.g. ``"mlp"`` or ``"cnn3"``.
      num_classes: width of the classifier output (positive int).
      **options: model options, e.g. ``dtype=jnp.bfloat16``.

    Returns:
      An unbound ``flax.linen.Module``; logits have shape ``(N, num_classes)``.
    """
    factory = _factory(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    accepted = _accepted_options(factory)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for model {name!r}; accepted options: {accepted}"
            )
    if inspect.isclass(factory):
        return factory(num_classes=num_classes, **options)
    return factory(num_classes, **options)
