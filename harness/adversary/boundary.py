"""The 4xx boundary of numeric fields whose schema states no maximum, found by bisection against
the target itself (docs/design.md, "Threat model": limits come from the server's own answers, as
the OpenAPI document rarely states them).

A boundary case names one integer or number field of one endpoint. The driver sends it as up to
`PROBES` requests, one at a time (each answer decides the next value): a fixed ladder of growing
values until the server refuses one with a 4xx, then halving the interval between the largest
value accepted and the smallest refused (by ratio while it is wide, then by difference), so a
limit below a million or so is found exactly and a larger one bracketed closely. Each probe is
an ordinary hostile request of the history (named `FIELD=bisect:STEP`), judged by `availability`
like any other; the coverage report reads the boundary back from the history
(`harness.adversary.coverage`). A 5xx or no answer ends the search (the incident rule takes it
from there).

Fields that multiply the server's work (`n`, `best_of`, token counts) are left out: a search on
them would be a denial of service of the run itself, not a probe of a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from harness.adversary.cases import OWN_FIELDS, Case, Target, label
from harness.adversary.schema import FieldSpec, alternatives
from harness.adversary.values import TOKEN_FIELDS, Value

PROBES = 32
"""Requests per boundary case at most (the budget counts this many)."""
LADDER_INT = (16, 1024, 2**16, 2**24, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1)
LADDER_NUMBER = (2.0, 16.0, 1024.0, 1e6, 1e12, 1e300)
WORK_FIELDS = frozenset({"n", "best_of"}) | TOKEN_FIELDS
"""Fields whose large values make the server do that much more work: never searched."""


def boundary_fields(specs: list[FieldSpec]) -> list[tuple[FieldSpec, bool]]:
    """(field, is_integer) for every numeric field without a documented maximum, schema order."""
    out = []
    for s in specs:
        if s.name in OWN_FIELDS or s.name in WORK_FIELDS:
            continue
        alts = [a for a in alternatives(s.schema) if a.get("type") in ("integer", "number")]
        if alts and not any(isinstance(a.get("maximum"), (int, float)) for a in alts):
            out.append((s, any(a.get("type") == "integer" for a in alts)))
    return out


def boundary_cases(target: Target) -> list[Case]:
    """One case per searchable field, endpoints interleaved (deterministic)."""
    columns = [[Case(label(ep, [(s.name, Value("bisect", "bisect", None, True))]), ep, kind="boundary",
                     copies=PROBES, fields=((s.name, "bisect"),), numeric="integer" if integer else "number")
                for s, integer in boundary_fields(specs)] for ep, specs in target.endpoints.items()]
    depth = max((len(c) for c in columns), default=0)
    return [c[i] for i in range(depth) for c in columns if i < len(c)]


def probe_name(case: Case, step: int) -> str:
    """The op name of a case's `step`th probe (parsed back by the coverage report)."""
    name = case.fields[0][0]
    return label(case.endpoint, [(name, Value(f"bisect:{step}", "bisect", None, True))])


@dataclass
class Bisection:
    """The search for one field's boundary: `next()` is the value to send (None: done), `answer`
    takes the status it got and says whether to go on."""

    integer: bool
    accepted: list[int | float] = field(default_factory=list)
    refused: list[int | float] = field(default_factory=list)
    sent: int = 0

    def next(self) -> int | float | None:
        if self.sent >= PROBES:
            return None
        if not self.refused:
            ladder: tuple[int | float, ...] = LADDER_INT if self.integer else LADDER_NUMBER
            return ladder[self.sent] if self.sent < len(ladder) else None
        lo, hi = max(self.accepted, default=0), min(self.refused)
        wide = lo >= 1 and hi > 4 * lo  # halve the ratio while it is large, then the difference
        if self.integer:
            lo_i, hi_i = int(lo), int(hi)
            return None if hi_i - lo_i <= 1 else math.isqrt(lo_i * hi_i) if wide else (lo_i + hi_i) // 2
        mid = math.sqrt(lo * hi) if wide else (lo + hi) / 2
        return None if mid in (lo, hi) else mid

    def answer(self, value: int | float, status: int | None) -> bool:
        """Record `status` for `value`; False when the search must stop (a 5xx or no answer)."""
        self.sent += 1
        if status is None or status >= 500:
            return False
        (self.accepted if status < 400 else self.refused).append(value)
        return True
