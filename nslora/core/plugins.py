"""The one resolver for every plug-in point: a built-in name from a visible registry, or `package.module:Name`.

    cls = resolve("policy.name", "my_rules:Cautious", REGISTRY, "a class with a decide(view) method",
                  accept=lambda obj: isinstance(obj, type) and callable(getattr(obj, "decide", None)))

Errors are one line, name the config key, and say how to fix it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from nslora.core.errors import UserError


def load_object(key: str, spec: str) -> Any:
    """The object `package.module:Name` names (dots after the colon walk attributes)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{key}={spec!r}: write your own as 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{key}={spec!r}: module {module_name!r} cannot be imported ({e}); put it on PYTHONPATH or install it") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UserError(f"{key}={spec!r}: {module_name} has no {attr!r}; check the name")
    return obj


def check_name(key: str, name: Any, builtins) -> None:
    """Refuse a name that is neither a built-in nor of the form 'package.module:Name' (nothing is imported)."""
    if not isinstance(name, str) or not name:
        raise UserError(f"{key}={name!r} must be a name: one of {', '.join(sorted(builtins))}, or 'package.module:Name'")
    if name not in builtins and ":" not in name:
        raise UserError(f"{key}={name!r} is not a built-in ({', '.join(sorted(builtins))}); name your own as 'package.module:Name'")


def resolve(key: str, name: str, registry: dict[str, Any], what: str, accept: Callable[[Any], bool] | None = None) -> Any:
    """registry[name], or the user's object named 'package.module:Name' (refused unless `accept(obj)`)."""
    check_name(key, name, registry)
    if name in registry:
        return registry[name]
    obj = load_object(key, name)
    if accept is not None and not accept(obj):
        raise UserError(f"{key}={name!r} is not {what}")
    return obj


def instantiate(key: str, factory: Callable[..., Any], params: dict[str, Any], **defaults: Any) -> Any:
    """factory(**params), adding each default its signature names and params do not set; a misfit is one line."""
    kwargs = dict(params)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: pass params only
        accepted = {}
    kwargs.update({k: v for k, v in defaults.items() if k in accepted and k not in kwargs})
    label = getattr(factory, "__name__", repr(factory))
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise UserError(f"{key} {sorted(params)} do not fit {label}: {e}") from None
    except ValueError as e:  # the component refused a value: its message names it
        raise UserError(f"{key}: {label} refused its settings: {' '.join(str(e).split())}") from None


def conformance(key: str, name: str, check: Callable[[], None]) -> None:
    """Run a conformance check at start; an AssertionError becomes one line naming the rule broken."""
    try:
        check()
    except AssertionError as e:
        rule = " ".join(str(e).split()) or "conformance check failed"
        raise UserError(f"{key}={name!r} breaks its contract: {rule}") from None
