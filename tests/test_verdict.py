"""The one verdict function: every row of the rule table (docs/design.md, "Verdict"), and the same
verdicts as the old pipeline's overrides on every combination of inputs."""

from __future__ import annotations

import itertools

import pytest

from harness.verdict import CheckResult, Verdict, Violation, decide, decide_exploration, overall


def _v(check: str = "c") -> Violation:
    return Violation(check=check, scenario="s", message="m", users=["u"], op_ids=["o"])


def _r(verdict: Verdict, violations: list[Violation] | None = None, name: str = "c") -> CheckResult:
    return CheckResult(name, verdict, exercised=1, violations=violations or [])


def test_rule_rows() -> None:
    ok, unknown, na = _r(Verdict.PASS, name="a"), _r(Verdict.UNKNOWN, name="b"), _r(Verdict.NOT_APPLICABLE)
    v = _v()
    fail = _r(Verdict.FAIL, [v], name="f")
    assert decide([]).verdict is Verdict.UNKNOWN  # row 2: nothing decided
    assert decide([na]).verdict is Verdict.UNKNOWN
    assert decide([ok, fail], error="died").verdict is Verdict.FAIL  # row 3 beats row 4
    assert decide([ok], error="died").verdict is Verdict.UNKNOWN  # row 4
    assert decide([ok, unknown]).verdict is Verdict.UNKNOWN  # row 5
    assert decide([ok], skipped={"x": "no adapters"}).verdict is Verdict.UNKNOWN  # row 6
    assert decide([ok, na]).verdict is Verdict.PASS  # row 7
    known = decide([ok, fail], [v])  # row 1: every violation known -> that check passes
    assert known.verdict is Verdict.PASS and known.checks[1].verdict is Verdict.PASS
    assert fail.verdict is Verdict.FAIL and fail.violations == [v]  # the inputs are not changed
    partly = decide([_r(Verdict.FAIL, [v, _v()])], [v])
    assert partly.verdict is Verdict.FAIL and len(partly.checks[0].violations) == 1


def test_reasons_say_why() -> None:
    d = decide([_r(Verdict.FAIL, [_v()], name="canary"), _r(Verdict.UNKNOWN, name="exercised")], error="boom\nmore",
               skipped={"lora": "no adapters"})
    assert d.reasons == ["canary FAILED: 1 violation(s)", "the run stopped early: boom",
                         "exercised UNKNOWN: could not decide", "scenario lora skipped: no adapters"]
    assert "held" in decide([_r(Verdict.PASS)]).reasons[0]


def _old(results: list[CheckResult], known: set[int], error: str | None, skipped: bool) -> Verdict:
    """The old pipeline: apply_known (only without an error) mutated checks, then overall, then overrides."""
    if not error:
        for r in results:
            kept = [v for v in r.violations if id(v) not in known]
            if len(kept) != len(r.violations):
                r.violations = kept
                if not kept and r.verdict is Verdict.FAIL:
                    r.verdict = Verdict.PASS
    verdict = overall(results)
    if error and verdict is not Verdict.FAIL:
        verdict = Verdict.UNKNOWN
    if skipped and verdict is Verdict.PASS:
        verdict = Verdict.UNKNOWN
    return verdict


def _build(combo: tuple[object, ...]) -> tuple[list[CheckResult], list[Violation]]:
    results, known = [], []
    for i, state in enumerate(combo):
        if state == "known-fail":
            v = _v()
            known.append(v)
            results.append(_r(Verdict.FAIL, [v], name=f"c{i}"))
        elif state == "half-known":
            v = _v()
            known.append(v)
            results.append(_r(Verdict.FAIL, [v, _v()], name=f"c{i}"))
        elif state is Verdict.FAIL:
            results.append(_r(Verdict.FAIL, [_v()], name=f"c{i}"))
        else:
            results.append(_r(state, name=f"c{i}"))
    return results, known


@pytest.mark.parametrize("error,skipped", list(itertools.product([None, "stopped"], [False, True])))
def test_same_verdicts_as_the_old_pipeline(error: str | None, skipped: bool) -> None:
    states = [Verdict.PASS, Verdict.UNKNOWN, Verdict.NOT_APPLICABLE, Verdict.FAIL, "known-fail", "half-known"]
    for combo in itertools.product(states, repeat=3):
        old_results, old_known = _build(combo)
        expected = _old(old_results, {id(v) for v in old_known}, error, skipped)
        results, known = _build(combo)
        # the engine matches known findings only when the run did not stop early, as before
        got = decide(results, [] if error else known, error=error, skipped={"x": "y"} if skipped else {})
        assert got.verdict is expected, combo
        assert [r.verdict for r in got.checks] == [r.verdict for r in old_results], combo


def test_exploration_rows() -> None:
    assert decide_exploration(1, "died", {}).verdict is Verdict.FAIL
    assert decide_exploration(0, "died", {"pass": 5}).verdict is Verdict.UNKNOWN
    assert decide_exploration(0, None, {}).verdict is Verdict.UNKNOWN
    assert decide_exploration(0, None, {"pass": 3}).exit_code == 0
    # fail closed: one PASS among UNKNOWNs shows nothing about the others
    assert decide_exploration(0, None, {"pass": 1, "unknown": 4}).verdict is Verdict.UNKNOWN


def test_a_pass_resting_on_an_unverified_capability_is_unknown() -> None:
    """cache-accounting needs cached-token counts: when the probe's repeated prompt did not show
    them, its PASS (on counts the target was not shown to report truthfully) is UNKNOWN; a FAIL
    stays a FAIL, and a check that does not need it keeps its PASS."""
    import harness.checks  # noqa: F401  (registers the checks)

    lacking = {"cached-tokens": "repeat of a 105-token prompt reported cached_tokens=0"}
    accounting = CheckResult("cache-accounting", Verdict.PASS, exercised=3, evidence={"hits_checked": 3})
    d = decide([accounting, _r(Verdict.PASS, name="canary")], lacking=lacking)
    assert d.verdict is Verdict.UNKNOWN
    by = {c.name: c for c in d.checks}
    assert by["cache-accounting"].verdict is Verdict.UNKNOWN and "could not verify" in by["cache-accounting"].notes[-1]
    assert by["canary"].verdict is Verdict.PASS
    failed = decide([_r(Verdict.FAIL, [_v("cache-accounting")], name="cache-accounting")], lacking=lacking)
    assert failed.verdict is Verdict.FAIL
    assert decide([accounting]).verdict is Verdict.PASS
