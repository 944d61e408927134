"""The registry of named checks. A check reads only the history and returns a CheckResult."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.history.record import History
from harness.verdict import CheckResult


@dataclass(frozen=True)
class CheckContext:
    """Settings a check may use; nothing here comes from the server."""

    tolerance: float
    policy: str = "shared-prefix"


CheckFn = Callable[[History, CheckContext], CheckResult]
REGISTRY: dict[str, tuple[str, CheckFn]] = {}


def check(name: str, description: str) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        def wrapped(history: History, ctx: CheckContext) -> CheckResult:
            result = fn(history, ctx)
            result.name, result.description = name, description
            return result

        REGISTRY[name] = (description, wrapped)
        return wrapped

    return deco


def run_checks(history: History, ctx: CheckContext, names: list[str] | None = None) -> list[CheckResult]:
    from harness import checks  # noqa: F401  (registers the checks)

    selected = names or list(REGISTRY)
    return [REGISTRY[n][1](history, ctx) for n in selected]
