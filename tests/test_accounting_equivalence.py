"""The fast `cache-accounting` and `exercised` checks equal their quadratic reference rules
(bench/reference_checks.py, the rules as first written) on random histories: same verdict, same
count exercised, same notes, same violations word for word. `python -m bench.bench_checks verify`
runs the same comparison on thousands more; this keeps it in the suite."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings

from bench import reference_checks as ref
from harness.checks.base import CheckContext, get
from harness.checks.exercised import common_prefix_len
from harness.history.record import History, Record
from harness.verdict import CheckResult, Verdict
from tests.factories import cache_histories, honest_histories, synthetic_runs

CTX = CheckContext(tolerance=1e-3)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=60)  # fast lane: bench_checks verify runs thousands


def summary(r: CheckResult) -> tuple[Any, ...]:
    return (r.verdict, r.exercised, list(r.notes),
            [(v.check, v.scenario, v.users, v.op_ids, v.message, v.details) for v in r.violations])


def assert_equivalent(records: list[Record]) -> tuple[CheckResult, CheckResult]:
    h = History(records)
    accounting, exercised = get("cache-accounting")(h, CTX), get("exercised")(h, CTX)
    assert summary(accounting) == summary(ref.accounting(h))
    assert summary(exercised) == summary(ref.exercised(h))
    return accounting, exercised


def note_verdicts(accounting: CheckResult, exercised: CheckResult) -> None:
    """Hypothesis statistics (--hypothesis-show-statistics): which verdicts the examples reached."""
    event(f"cache-accounting {accounting.verdict.value}, exercised {exercised.verdict.value}")


@FEWER
@given(cache_histories())
def test_fast_checks_equal_the_reference_rules(records: list[Record]) -> None:
    note_verdicts(*assert_equivalent(records))


@SETTINGS
@given(honest_histories())
def test_an_honest_prefix_cache_is_never_a_violation(records: list[Record]) -> None:
    accounting, exercised = assert_equivalent(records)
    note_verdicts(accounting, exercised)
    assert accounting.verdict is not Verdict.FAIL, accounting.violations


def test_common_prefix_len_equals_the_reference() -> None:
    cases = [([], []), ([1], []), ([1, 2, 3], [1, 2]), ([1, 2, 3], [1, 2, 3]), ([1, 2], [2, 1]),
             ([0] * 9, [0] * 9 + [1])]
    for a, b in cases:
        assert common_prefix_len(a, b) == ref.common_prefix_len(a, b)


def test_a_synthetic_healthy_run_passes_both_forms() -> None:
    accounting, exercised = assert_equivalent(synthetic_runs(scenarios=2, users=4, turns=2, block=16))
    assert accounting.verdict is Verdict.PASS and accounting.exercised > 0
    assert exercised.verdict is Verdict.PASS and exercised.exercised > 0
