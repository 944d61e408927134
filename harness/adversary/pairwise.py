"""Pairwise combinations of fields' unusual-but-valid values, greedily, within a budget.

Every pair of (field A = a, field B = b) over the simple fields' unusual valid values is a
target; each row sets `ROW_FIELDS` fields (few, so one refused value does not hide the rest)
chosen to cover the most uncovered pairs, deterministic in the schema's order. The budget cuts
the rows; the coverage report states the pairs covered of all.
"""

from __future__ import annotations

from itertools import combinations

from harness.adversary.cases import Case, Target, label, simple_fields
from harness.adversary.values import Value, values_for

ROW_FIELDS = 4
VALUES_PER_FIELD = 2

Slot = tuple[str, int]  # (field, value index)


def unusual(target: Target, endpoint: str) -> dict[str, list[Value]]:
    """field -> its first VALUES_PER_FIELD valid non-default values (not drawn, not long)."""
    out = {}
    for spec in simple_fields(target.endpoints.get(endpoint, [])):
        vals = [v for v in values_for(spec, target.limits)
                if v.valid and not spec.is_default(v.value) and v.klass not in ("drawn", "long", "limit")]
        if vals:
            out[spec.name] = vals[:VALUES_PER_FIELD]
    return out


def all_pairs(vals: dict[str, list[Value]]) -> set[tuple[Slot, Slot]]:
    return {_key((a, i), (b, j)) for a, b in combinations(vals, 2)
            for i in range(len(vals[a])) for j in range(len(vals[b]))}


def pairwise_cases(target: Target, rows: int) -> tuple[list[Case], int, int]:
    """Up to `rows` rows per endpoint; returns (cases, pairs covered, pairs in all)."""
    cases: list[Case] = []
    covered_total = total = 0
    for endpoint in target.endpoints:
        vals = unusual(target, endpoint)
        uncovered = all_pairs(vals)
        total += len(uncovered)
        names = list(vals)
        for _ in range(rows):
            if not uncovered:
                break
            (a, i), (b, j) = min(uncovered)
            row: dict[str, int] = {a: i, b: j}
            while len(row) < ROW_FIELDS:
                best: tuple[int, str, int] | None = None
                for f in names:
                    if f in row:
                        continue
                    for k in range(len(vals[f])):
                        gain = sum(1 for g, m in row.items() if _key((f, k), (g, m)) in uncovered)
                        if gain and (best is None or gain > best[0]):
                            best = (gain, f, k)
                if best is None:
                    break
                row[best[1]] = best[2]
            slots = sorted(row.items(), key=lambda s: names.index(s[0]))
            for p, q in combinations(slots, 2):
                uncovered.discard(_key(p, q))
            parts = [(f, vals[f][k]) for f, k in slots]
            cases.append(Case(label(endpoint, parts), endpoint, {f: v.value for f, v in parts}, kind="pair",
                              fields=tuple((f, v.klass) for f, v in parts)))
        covered_total += len(all_pairs(vals)) - len(uncovered)
    return cases, covered_total, total


def _key(p: Slot, q: Slot) -> tuple[Slot, Slot]:
    return (p, q) if p[0] < q[0] else (q, p)
