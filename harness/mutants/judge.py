"""The kill-matrix judge: is a mutant killed, did an equivalent mutant stay alive, does the row count.

Pure: it reads what the runs left (per-scenario check verdicts of the mutated server and of the
unmutated baseline under the same configuration, seeds and known findings, and the server's hit
counts) and decides one row. A mutant is *killed* when some check FAILs on some scenario on the
mutated server and does not FAIL on that scenario on the baseline. A row counts only when the
server proved that its mutated code ran: a killed mutant must have changed a value at least once
(else the FAIL cannot be laid to it), an equivalent mutant must have been called. A patch whose
symbol this vLLM lacks makes the row n/a with that reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.mutants.hits import Hits


@dataclass(frozen=True)
class Outcome:
    """One scenario (or the timing audit) on one server."""

    scenario: str
    verdict: str
    checks: dict[str, str]
    """check name -> verdict value (known findings already moved out)."""
    requests: int = 0
    error: str | None = None
    violations: dict[str, str] = field(default_factory=dict)
    """check name -> its first violation, in words (FAILed checks only)."""
    seed: int | None = None
    folder: str = ""
    reproducers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "verdict": self.verdict, "checks": dict(self.checks),
                "requests": self.requests, "error": self.error, "violations": dict(self.violations),
                "seed": self.seed, "folder": self.folder, "reproducers": list(self.reproducers)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        return cls(d["scenario"], d["verdict"], dict(d["checks"]), int(d.get("requests", 0)), d.get("error"),
                   dict(d.get("violations", {})), d.get("seed"), d.get("folder", ""),
                   tuple(d.get("reproducers", ())))


@dataclass(frozen=True)
class Kill:
    """A check that FAILed on a scenario on the mutant and not on the baseline."""

    scenario: str
    check: str
    violation: str


def kills(mutant: Iterable[Outcome], baseline: dict[str, Outcome]) -> list[Kill]:
    """Every (scenario, check) FAIL of the mutated server that the baseline's same scenario lacks."""
    out = []
    for o in mutant:
        base = baseline.get(o.scenario)
        if base is None:
            continue
        for check, verdict in o.checks.items():
            if verdict == "fail" and base.checks.get(check) != "fail":
                out.append(Kill(o.scenario, check, o.violations.get(check, "")))
    return out


@dataclass(frozen=True)
class Row:
    """One mutant's line of the matrix."""

    status: str
    """killed, survived, not-exercised, not-killed (an equivalent's good end), n/a, error, unjudged."""
    good: bool
    reason: str
    kills: tuple[Kill, ...] = ()
    applicable: bool = True


def judge(kind: str, outcomes: list[Outcome], baseline: dict[str, Outcome], hits: Hits,
          error: str | None = None) -> Row:
    """Decide one row; see the module docstring."""
    if hits.missing:
        return Row("n/a", True, "; ".join(hits.missing), applicable=False)
    if error and not outcomes:
        return Row("error", False, f"the mutated server did not run: {error}")
    lacking = [o.scenario for o in outcomes if o.scenario not in baseline]
    if lacking:
        return Row("unjudged", False, f"no baseline for {', '.join(lacking)}")
    found = tuple(kills(outcomes, baseline))
    where = ", ".join(dict.fromkeys(f"{k.check} ({k.scenario})" for k in found))
    if kind == "equivalent":
        if hits.calls == 0:
            return Row("not-exercised", False, "no patched function was ever called: nothing was shown")
        if found:
            return Row("killed", False, f"an equivalent mutant was killed by {where}: a check too eager, or the "
                       "change is not equivalent", found)
        return Row("not-killed", True, f"patched code called {hits.calls} times, {hits.changed} of them changing "
                   "a value; no check FAILed that the baseline did not")
    if found and hits.changed:
        return Row("killed", True, f"killed by {where}", found)
    if found:
        return Row("unjudged", False, f"{where} FAILed, but the mutation never changed a value "
                   f"({hits.calls} calls): the FAIL cannot be laid to it", found)
    if hits.changed == 0:
        return Row("not-exercised", False, f"the mutation never changed a value ({hits.calls} calls of the "
                   "patched code): its scenarios do not reach the bug")
    note = f"; the run stopped early: {error}" if error else ""
    return Row("survived", False, f"the mutation changed a value {hits.changed} times and no check FAILed that "
               f"the baseline did not{note}")


def kill_rate(rows: dict[str, tuple[str, Row]]) -> tuple[int, int]:
    """(killed, applicable) over the mutants (not the equivalents); rows: name -> (kind, row)."""
    applicable = [r for kind, r in rows.values() if kind == "mutant" and r.applicable]
    return sum(r.status == "killed" for r in applicable), len(applicable)


def overall_ok(rows: dict[str, tuple[str, Row]]) -> bool:
    """Every row good, and at least one mutant applicable."""
    _, applicable = kill_rate(rows)
    return applicable > 0 and all(r.good for _, r in rows.values())
