"""Counterfactual coverage (harness.plan.cover): every cross-tenant pair observable, with the fewest re-runs."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from harness.plan.cover import code_length, covering_splits, observable_pairs, pairs_present


def _burst() -> dict[str, str]:
    return {f"u{i:02d}": f"t{(i - 1) % 4 + 1}" for i in range(1, 17)}


def test_halves_leave_a_third_of_burst_unobservable() -> None:
    users = list(_burst())
    halves = [set(users[0::2]), set(users[1::2])]
    present = pairs_present(_burst())
    assert len(present) == 192
    assert len(present - observable_pairs(_burst(), halves)) == 64


def test_burst_is_covered_by_four_reruns() -> None:
    splits = covering_splits(_burst())
    assert len(splits) == 4
    assert observable_pairs(_burst(), splits) == pairs_present(_burst())


@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), st.integers(0, 11), min_size=1, max_size=30))
def test_every_cross_tenant_pair_is_observable(assign: dict[str, int]) -> None:
    tenant_of = {u: f"t{t}" for u, t in assign.items()}
    splits = covering_splits(tenant_of)
    assert observable_pairs(tenant_of, splits) == pairs_present(tenant_of)
    assert all(0 < len(f) < len(tenant_of) for f in splits)
    assert len(splits) <= code_length(len(set(tenant_of.values())))


def _separates(k: int, tenants: int) -> bool:
    """Brute force: can k fixed-sets separate `tenants` one-user tenants in both directions?"""
    subsets = [frozenset(c) for r in range(k + 1) for c in combinations(range(k), r)]
    # each tenant gets the set of re-runs that hold it fixed; all ordered pairs need v-not-subset-of-s
    return any(all(not a <= b for a in codes for b in codes if a is not b) for codes in combinations(subsets, tenants))


def test_the_number_of_reruns_is_the_minimum() -> None:
    for tenants in range(2, 8):
        k = code_length(tenants)
        assert _separates(k, tenants)
        assert not _separates(k - 1, tenants)
