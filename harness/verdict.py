"""Three-valued verdicts: PASS only when every check held and was exercised (exit 0 / 1 / 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"
    NOT_APPLICABLE = "n/a"  # a check's own state only: nothing in this run was in its scope

    @property
    def exit_code(self) -> int:
        return {Verdict.PASS: 0, Verdict.FAIL: 1}.get(self, 2)


@dataclass
class Violation:
    """One violation, explained in plain words, with the operations that show it."""

    check: str
    scenario: str
    message: str
    users: list[str]
    op_ids: list[str]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    """A check's verdict with its evidence: how much it exercised, what it found, and why."""

    name: str
    verdict: Verdict
    exercised: int = 0
    violations: list[Violation] = field(default_factory=list)
    drift: int = 0
    notes: list[str] = field(default_factory=list)
    description: str = ""


def overall(results: list[CheckResult]) -> Verdict:
    """FAIL if any check failed; else UNKNOWN if any could not decide; else PASS. Checks with
    nothing in their scope (e.g. no adversarial tenant in the run) do not count, but at least
    one check must have decided."""
    results = [r for r in results if r.verdict is not Verdict.NOT_APPLICABLE]
    if not results:
        return Verdict.UNKNOWN
    if any(r.verdict is Verdict.FAIL for r in results):
        return Verdict.FAIL
    if any(r.verdict is Verdict.UNKNOWN for r in results):
        return Verdict.UNKNOWN
    return Verdict.PASS
