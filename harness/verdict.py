"""Three-valued verdicts and the one function that decides a run (docs/design.md, "Verdict").

Checks return their own `CheckResult`s (PASS / FAIL / UNKNOWN / N/A for their own scope); they
never decide the run. `decide` does, from the check results, the known-finding matches, an
early-stop error and the skipped scenarios, and says why. `decide_exploration` applies the same
rules to a property-based search. Exit codes: 0 PASS, 1 FAIL, 2 UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.evidence import EvidenceRow


class Verdict(StrEnum):
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
    evidence: dict[str, int | float] = field(default_factory=dict)
    """How much the check showed, in named counts (e.g. tokens compared, pairs covered / present);
    the minimum evidence for PASS is judged on these (docs/design.md, "Verdict")."""


@dataclass(frozen=True)
class Decision:
    """A run's verdict, the reasons for it (one line each), and the check results as the run
    reports them (violations matched by known findings moved out, see `decide`)."""

    verdict: Verdict
    reasons: list[str]
    checks: list[CheckResult]
    evidence: list[EvidenceRow] = field(default_factory=list)
    """The minimum-evidence table measured on this run (harness.evidence)."""

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


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


def without_known(results: list[CheckResult], known: Iterable[Violation]) -> list[CheckResult]:
    """Copies of `results` with the violations in `known` (by identity) moved out. A check left
    with no violation no longer FAILs (rule 1 of docs/design.md, "Verdict")."""
    matched = {id(v) for v in known}
    out = []
    for r in results:
        kept = [v for v in r.violations if id(v) not in matched]
        if len(kept) == len(r.violations):
            out.append(r)
            continue
        verdict = Verdict.PASS if not kept and r.verdict is Verdict.FAIL else r.verdict
        note = f"{len(r.violations) - len(kept)} violation(s) matched known findings"
        out.append(replace(r, verdict=verdict, violations=kept, notes=[*r.notes, note]))
    return out


def decide(results: list[CheckResult], known: Iterable[Violation] = (), *, error: str | None = None,
           skipped: dict[str, str] | None = None, lacking: dict[str, str] | None = None) -> Decision:
    """The run's verdict, by the rule table in docs/design.md, "Verdict" (first matching row wins
    after rule 1 has adjusted the checks):

    1. a check's violations that match known findings are moved out; a FAIL left with none is PASS;
       a PASS below the minimum evidence for it (harness.evidence) is UNKNOWN, and so is a PASS of a
       check that needs what the capability probe could not verify (`lacking`: need -> why);
    2. no check decided (none ran, or every one was N/A)        -> UNKNOWN;
    3. some check FAILed (even if the run stopped early)        -> FAIL;
    4. the run stopped early (`error`)                          -> UNKNOWN;
    5. some check is UNKNOWN                                    -> UNKNOWN;
    6. a scenario was skipped (the target could not run it)     -> UNKNOWN;
    7. otherwise                                                -> PASS.
    """
    from harness.evidence import assess, enforce  # the table reads CheckResult: imported here, not at the top

    checks = without_known(results, known)
    table = assess(checks)
    checks = unverified_needs(enforce(checks, table), lacking or {})
    deciding = [r for r in checks if r.verdict is not Verdict.NOT_APPLICABLE]
    failed = [r for r in deciding if r.verdict is Verdict.FAIL]
    unknown = [r for r in deciding if r.verdict is Verdict.UNKNOWN]
    reasons: list[str] = []
    if not deciding:
        reasons.append("no check decided anything" + (" (no request was recorded)" if not checks else ""))
    reasons += [f"{r.name} FAILED: {len(r.violations)} violation(s)" for r in failed]
    if error:
        reasons.append(f"the run stopped early: {error.splitlines()[0] if error.strip() else error}")
    reasons += [f"{r.name} UNKNOWN: {'; '.join(r.notes[:2]) or 'could not decide'}" for r in unknown]
    reasons += [f"scenario {name} skipped: {why}" for name, why in (skipped or {}).items()]
    if not deciding:
        verdict = Verdict.UNKNOWN
    elif failed:
        verdict = Verdict.FAIL
    elif error or unknown or skipped:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.PASS
        reasons.append(f"every check that applied held and was exercised ({len(deciding)} check(s))")
    return Decision(verdict, reasons, checks, table)


def unverified_needs(checks: list[CheckResult], lacking: dict[str, str]) -> list[CheckResult]:
    """A PASS resting on something the probe could not verify (cached-token counts that a repeated
    prompt did not show, a salt that did not separate) is UNKNOWN: the check ran on numbers the
    target was not shown to report truthfully (fail closed)."""
    from harness.checks.base import REGISTRY  # the registry imports this module: imported here

    out = []
    for r in checks:
        spec = REGISTRY.get(r.name)
        missing = [n.value for n in spec.needs if n.value in lacking] if spec is not None else []
        if r.verdict is Verdict.PASS and missing:
            why = "; ".join(f"{n}: {lacking[n]}" for n in missing)
            note = f"the probe could not verify what it needs ({why})"
            r = replace(r, verdict=Verdict.UNKNOWN, notes=[*r.notes, note])
        out.append(r)
    return out


def decide_exploration(found: int, aborted: str | None, verdicts: dict[str, int]) -> Decision:
    """A property-based search's verdict, fail closed: FAIL when it found a violation; UNKNOWN when
    it was aborted, or when any example run was not shown to hold (UNKNOWN), or when none ran;
    PASS only when every example run PASSed. `verdicts` counts example runs by verdict value."""
    runs = sum(verdicts.values())
    passed = verdicts.get(Verdict.PASS.value, 0)
    if found:
        return Decision(Verdict.FAIL, [f"{found} minimal failing scenario(s) found"], [])
    if aborted:
        return Decision(Verdict.UNKNOWN, [f"the search stopped early: {aborted}"], [])
    if not passed:
        return Decision(Verdict.UNKNOWN, ["no example run PASSed, so nothing was shown"], [])
    if passed < runs:
        return Decision(Verdict.UNKNOWN, [f"{runs - passed} of {runs} example runs did not PASS "
                                          f"({dict(sorted(verdicts.items()))}): they were not shown to hold"], [])
    return Decision(Verdict.PASS, [f"no violation in {passed} passing run(s)"], [])
