"""The servers under test behind one `Stack` protocol (see `harness.stacks.base`).

A stack the harness launches is one module (an `OwnedProcess` subclass, see `stacks.process`)
plus one `register` line below; `make_stack` finds it by name. Registrations name the class as
"module:Class" so that a command imports only the stack it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.stacks.base import Stack, StackTraits

_REGISTRY: dict[str, str | type] = {}


def register(name: str, factory: str | type) -> None:
    """Make a stack available to `make_stack` (and `--stack`) as `name`: a class, or its
    "module:Class" path, constructed with the options `make_stack` is given."""
    _REGISTRY[name] = factory


def unregister(name: str) -> None:
    """Forget a registration (a test's own stack, after the test)."""
    _REGISTRY.pop(name, None)


register("vllm", "harness.stacks.vllm:EmbeddedServer")
register("llama-cpp", "harness.stacks.llamacpp:LlamaCppServer")
register("vllm-fleet", "harness.stacks.fleet:FleetStack")

STACKS: tuple[str, ...] = tuple(_REGISTRY)
"""The stacks the harness ships with (`--stack`); `stack_names()` includes later registrations."""


def stack_names() -> tuple[str, ...]:
    """Every registered stack name, in registration order."""
    return tuple(_REGISTRY)


def stack_class(name: str) -> type:
    """The class registered as `name`; ValueError for an unknown name."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown stack {name!r}; choose one of {', '.join(_REGISTRY)}") from None
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert isinstance(cls, type), factory
        return cls
    return factory


def make_stack(target: str | None, name: str = "vllm", **options: Any) -> Stack:
    """The stack for a run: an external server at `target`, else the named launched stack built
    with `options` (its constructor's keywords: port, log_path, host, model_dir, ...)."""
    if target:
        from harness.stacks.external import ExternalStack

        return ExternalStack(target)
    stack = stack_class(name)(**options)
    if not isinstance(stack, Stack):
        raise TypeError(f"stack {name!r} ({type(stack).__name__}) does not implement the Stack protocol")
    return stack


__all__ = ["STACKS", "Stack", "StackTraits", "make_stack", "register", "stack_class", "stack_names", "unregister"]
