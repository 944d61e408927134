"""The minimum evidence for PASS (harness.evidence): stated once, measured in every run, and a
PASS below it is UNKNOWN with the shortfall named (docs/design.md, "Verdict")."""

from __future__ import annotations

from harness.checks.base import all_checks
from harness.evidence import MINIMUM_EVIDENCE, assess
from harness.verdict import CheckResult, Verdict, decide


def _full() -> list[CheckResult]:
    """Check results that meet every row of the table."""
    return [
        CheckResult("exercised", Verdict.PASS, exercised=3, evidence={"scenarios_requiring_reuse": 1}),
        CheckResult("cache-accounting", Verdict.PASS, exercised=4,
                    evidence={"hits": 4, "hits_checked": 4, "hits_unchecked": 0}),
        CheckResult("counterfactual-isolation", Verdict.PASS, exercised=6,
                    evidence={"tokens_compared": 96, "pairs_present": 4, "pairs_observable": 4}),
        CheckResult("cache-transparency", Verdict.PASS, exercised=6, evidence={"tokens_compared": 96}),
        CheckResult("availability", Verdict.PASS, exercised=20),
        CheckResult("prompt-echo", Verdict.PASS, exercised=12, evidence={"responses": 12, "without_prompt_ids": 0}),
    ]


def test_every_row_names_a_registered_check() -> None:
    names = {c.name for c in all_checks()}
    assert {m.check for m in MINIMUM_EVIDENCE} <= names


def test_a_run_that_meets_every_row_passes_and_reports_the_table() -> None:
    d = decide(_full())
    assert d.verdict is Verdict.PASS
    assert len(d.evidence) == len(MINIMUM_EVIDENCE) and all(r.met and r.applies for r in d.evidence)


def test_each_shortfall_alone_turns_pass_into_unknown_with_the_reason() -> None:
    shortfalls = {
        "exercised": {"scenarios_without_reuse": 1},
        "cache-accounting": {"hits_unchecked": 1},
        "counterfactual-isolation": {"pairs_observable": 3},
        "cache-transparency": {"tokens_compared": 0},
    }
    for check, change in shortfalls.items():
        results = _full()
        r = next(r for r in results if r.name == check)
        for key, value in change.items():
            if key == "exercised":
                r.exercised = value
            else:
                r.evidence[key] = value
        d = decide(results)
        assert d.verdict is Verdict.UNKNOWN, check
        judged = next(c for c in d.checks if c.name == check)
        assert judged.verdict is Verdict.UNKNOWN
        assert any("below the minimum evidence" in n for n in judged.notes)
        assert any(reason.startswith(f"{check} UNKNOWN: below the minimum evidence") for reason in d.reasons)


def test_a_fail_stays_fail_and_na_checks_are_not_measured() -> None:
    results = _full()
    results[3] = CheckResult("cache-transparency", Verdict.FAIL, exercised=0)
    results[4] = CheckResult("availability", Verdict.NOT_APPLICABLE)
    d = decide(results)
    assert d.verdict is Verdict.FAIL
    rows = {(r.check, r.what): r for r in assess(results)}
    assert not any(r.applies for (check, _), r in rows.items() if check == "availability")
