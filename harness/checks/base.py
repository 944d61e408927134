"""The check registry. A `Check` is one object: its name, what it shows, what it needs from the
target, and the function that reads the history and returns a `CheckResult`.

Everything that lists checks (the engine, reporters, the selftest, the timing audit) reads
`REGISTRY`; adding a check is one new module plus one import line in `harness/checks/__init__.py`.
A check returns its own result; it never decides the run (docs/design.md, "Verdict").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from harness.history.record import History
from harness.verdict import CheckResult


class Need(StrEnum):
    """A capability of the target that a check (or a fault's detection) rests on; each is derived
    from the capability probe (`harness.probe.needs.offered`)."""

    TOKEN_IDS = "token-ids"
    PROMPT_IDS = "prompt-ids"
    TOP_LOGPROBS = "top-logprobs"
    CACHED_TOKENS = "cached-tokens"
    SALT = "salt"
    COLD_REFERENCE = "cold-reference"
    PREFIX_METRICS = "prefix-metrics"

    @property
    def description(self) -> str:
        return _NEED_TEXT[self]


_NEED_TEXT = {
    Need.TOKEN_IDS: "output token ids (sent by the server, or recovered with its own tokenizer)",
    Need.PROMPT_IDS: "the prompt token ids of each request, echoed with its response",
    Need.TOP_LOGPROBS: "at least 2 top logprobs per output position",
    Need.CACHED_TOKENS: "per-request cached-token counts",
    Need.SALT: "a cache salt that verifiably separates cache domains",
    Need.COLD_REFERENCE: "a cache-free reference (a working cache salt or cache reset)",
    Need.PREFIX_METRICS: "prefix-cache counters on /metrics",
}


class Scope(StrEnum):
    RUN = "run"
    """Runs over every isolation run's history."""
    AUDIT = "audit"
    """Computed by the timing audit (`harness audit-timing`), not by an isolation run."""


@dataclass(frozen=True)
class CheckContext:
    """Settings a check may use; nothing here comes from the server."""

    tolerance: float
    policy: str = "shared-prefix"


CheckFn = Callable[[History, CheckContext], CheckResult]


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    needs: tuple[Need, ...] = ()
    """What the target must offer before this check can PASS; a check that needs nothing is never
    excused for an UNKNOWN (fail closed)."""
    compares_outputs: bool = False
    """Compares generated tokens against a reference run (counts toward "tokens compared")."""
    scope: Scope = Scope.RUN
    fn: CheckFn | None = None

    def __call__(self, history: History, ctx: CheckContext) -> CheckResult:
        if self.fn is None:
            raise TypeError(f"check {self.name!r} is computed by the {self.scope.value}, not from a history")
        result = self.fn(history, ctx)
        result.name, result.description = self.name, self.description
        return result


REGISTRY: dict[str, Check] = {}


def register(c: Check) -> Check:
    if c.name in REGISTRY:
        raise ValueError(f"check {c.name!r} registered twice")
    REGISTRY[c.name] = c
    return c


def check(name: str, description: str, needs: tuple[Need, ...] = (),
          compares_outputs: bool = False) -> Callable[[CheckFn], Check]:
    """Register the decorated function as a run check."""

    def deco(fn: CheckFn) -> Check:
        return register(Check(name, description, needs, compares_outputs, Scope.RUN, fn))

    return deco


def all_checks(scope: Scope | None = None) -> list[Check]:
    from harness import checks  # noqa: F401  (registers the checks)

    return [c for c in REGISTRY.values() if scope is None or c.scope is scope]


def get(name: str) -> Check:
    all_checks()
    return REGISTRY[name]


def run_checks(history: History, ctx: CheckContext, names: list[str] | None = None) -> list[CheckResult]:
    selected = [get(n) for n in names] if names else all_checks(Scope.RUN)
    return [c(history, ctx) for c in selected]
