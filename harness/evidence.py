"""The minimum evidence for PASS, stated once (docs/design.md, "Verdict", "Minimum evidence").

A check that held but showed too little has not earned its PASS: no token compared, a
cross-tenant pair never observable, a cache hit never checked, no cross-user reuse, no hostile
request answered, an adversary that had no OpenAPI document to draw its fields from. Each row
below names the check, the evidence count it reads (`CheckResult.evidence`, or `exercised`) and
the least it needs. `assess` measures every row against a run's check results, `enforce` turns a
PASS below its minimum into UNKNOWN; the verdict function applies both, and every report shows the
table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from harness.verdict import CheckResult, Verdict

Measure = Callable[[CheckResult], float]


def _count(key: str) -> Measure:
    if key == "exercised":
        return lambda r: float(r.exercised)
    return lambda r: float(r.evidence.get(key, 0))


def _uncovered(r: CheckResult) -> float:
    return float(r.evidence.get("pairs_present", 0) - r.evidence.get("pairs_observable", 0))


@dataclass(frozen=True)
class Minimum:
    """One row of the table: `check` needs `measure` >= `least` (or <= `most`) to PASS."""

    check: str
    what: str
    measure: Measure
    least: float | None = None
    most: float | None = None

    def met(self, value: float) -> bool:
        return (self.least is None or value >= self.least) and (self.most is None or value <= self.most)

    @property
    def bound(self) -> str:
        return f">= {self.least:g}" if self.least is not None else f"<= {self.most:g}"


MINIMUM_EVIDENCE: tuple[Minimum, ...] = (
    Minimum("exercised", "scenarios that require cross-user reuse and showed none", _count("scenarios_without_reuse"),
            most=0),
    Minimum("cache-accounting", "cache hits checked against their domain", _count("hits_checked"), least=1),
    Minimum("cache-accounting", "cache hits left unchecked (ambiguous source)", _count("hits_unchecked"), most=0),
    Minimum("cache-accounting", "cache hits without token ids", _count("hits_without_ids"), most=0),
    Minimum("counterfactual-isolation", "output tokens compared with a re-drawn neighbour's run",
            _count("tokens_compared"), least=1),
    Minimum("counterfactual-isolation", "cross-tenant (victim, source) pairs never observable", _uncovered, most=0),
    Minimum("counterfactual-isolation", "conversations not comparable (no token ids)", _count("incomparable"),
            most=0),
    Minimum("cache-transparency", "output tokens compared with the cold solo reference",
            _count("tokens_compared"), least=1),
    Minimum("cache-transparency", "conversations not comparable (no token ids)", _count("incomparable"), most=0),
    Minimum("prompt-echo", "responses whose echoed prompt ids were compared", _count("responses"), least=1),
    Minimum("prompt-echo", "responses without prompt token ids", _count("without_prompt_ids"), most=0),
    Minimum("availability", "hostile requests answered", _count("exercised"), least=1),
    Minimum("availability", "adversarial scenarios fuzzed without an OpenAPI document (only the few fields every "
            "OpenAI-compatible server takes)", _count("scenarios_without_openapi"), most=0),
)


@dataclass(frozen=True)
class EvidenceRow:
    """One row measured on a run: `applies` is False when the check did not PASS or FAIL (then
    its own verdict already says why) or is not in the run."""

    check: str
    what: str
    bound: str
    value: float | None
    met: bool
    applies: bool


def assess(results: list[CheckResult]) -> list[EvidenceRow]:
    """Every row of the table measured on `results`."""
    by_name = {r.name: r for r in results}
    rows = []
    for m in MINIMUM_EVIDENCE:
        r = by_name.get(m.check)
        applies = r is not None and r.verdict in (Verdict.PASS, Verdict.FAIL)
        value = m.measure(r) if r is not None and applies else None
        rows.append(EvidenceRow(m.check, m.what, m.bound, value, value is None or m.met(value), applies))
    return rows


def enforce(results: list[CheckResult], rows: list[EvidenceRow]) -> list[CheckResult]:
    """Copies of `results` where a PASS below its minimum evidence is UNKNOWN, with the reason."""
    short: dict[str, list[EvidenceRow]] = {}
    for row in rows:
        if row.applies and not row.met:
            short.setdefault(row.check, []).append(row)
    out = []
    for r in results:
        rows_short = short.get(r.name)
        if r.verdict is not Verdict.PASS or not rows_short:
            out.append(r)
            continue
        notes = [f"below the minimum evidence for PASS: {row.what} = {row.value:g} (needs {row.bound})"
                 for row in rows_short]
        out.append(replace(r, verdict=Verdict.UNKNOWN, notes=[*notes, *r.notes]))
    return out


__all__ = ["MINIMUM_EVIDENCE", "EvidenceRow", "Minimum", "assess", "enforce"]
