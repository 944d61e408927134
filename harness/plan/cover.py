"""Counterfactual coverage: which re-runs make every cross-tenant influence observable.

A re-run holds some users fixed and re-draws everyone else's private content (docs/design.md,
"The problem"). An ordered pair (victim v, source s) is *observable* in a re-run when v is held
fixed and s is re-drawn: a change in v's tokens can then only come from s's (or another re-drawn
user's) content. Every pair of users of different tenants must be observable in some re-run.

The fewest re-runs: give each tenant a distinct code of k bits, all with the same number of ones
(a middle layer of the k-cube, so no code is contained in another); re-run i holds fixed the
users whose tenant's code has bit i set. For tenants A != B some bit is set in A's code and clear
in B's, so (A's user, B's user) is observable there. By Sperner's theorem no family of k re-runs
separates more than C(k, k // 2) tenants, so the smallest k with C(k, k // 2) >= tenants is the
minimum: 2 re-runs for 2 tenants, 3 for 3, 4 for 4 to 6, 5 for 7 to 10, 6 for 11 to 20.
Users of one tenant are fixed and re-drawn together, so a re-drawn tenant's canaries and secrets
can be re-drawn with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations
from math import comb

Pair = tuple[str, str]
"""(victim user, source user)."""


def code_length(tenants: int) -> int:
    """The fewest re-runs that separate `tenants` tenants pairwise in both directions."""
    if tenants < 2:
        return 0
    k = 2
    while comb(k, k // 2) < tenants:
        k += 1
    return k


def covering_splits(tenant_of: Mapping[str, str]) -> list[set[str]]:
    """Per re-run, the users held fixed (in a stable order: the tenants' first appearance).

    Codes are taken so that every bit is used by some tenant and left clear by another, so no
    re-run holds everyone or no one fixed."""
    tenants = list(dict.fromkeys(tenant_of.values()))
    k = code_length(len(tenants))
    if k == 0:
        return []
    codes = _balanced_codes(k, len(tenants))
    fixed: list[set[str]] = [set() for _ in range(k)]
    for user, tenant in tenant_of.items():
        for bit in codes[tenants.index(tenant)]:
            fixed[bit].add(user)
    return [f for f in fixed if f and len(f) < len(tenant_of)]


def _balanced_codes(k: int, n: int) -> list[tuple[int, ...]]:
    """n distinct weight-k//2 codes (as the set bits), spreading the ones over the bits."""
    chosen: list[tuple[int, ...]] = []
    use = [0] * k
    candidates = list(combinations(range(k), k // 2))
    for _ in range(n):
        best = min(candidates, key=lambda c: (sum(use[b] for b in c), c))
        candidates.remove(best)
        chosen.append(best)
        for b in best:
            use[b] += 1
    return chosen


def pairs_present(tenant_of: Mapping[str, str]) -> set[Pair]:
    """Every ordered pair of users of different tenants."""
    return {(v, s) for v in tenant_of for s in tenant_of if tenant_of[v] != tenant_of[s]}


def observable_pairs(tenant_of: Mapping[str, str], fixed_sets: Iterable[Iterable[str]]) -> set[Pair]:
    """The cross-tenant pairs some re-run makes observable (victim fixed, source re-drawn)."""
    out: set[Pair] = set()
    users = set(tenant_of)
    for fixed in fixed_sets:
        held = set(fixed) & users
        out |= {(v, s) for v in held for s in users - held if tenant_of[v] != tenant_of[s]}
    return out
