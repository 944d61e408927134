"""Paths to a false PASS (issue: sound verdicts), each shown on a hand-made history: every test here
failed on the rules as they were before and passes on the rules as they are now."""

from __future__ import annotations

from harness.checks.base import CheckContext, get
from harness.checks.compare import compare_tokens
from harness.history.record import History
from harness.verdict import Verdict
from tests.factories import info, op

CTX = CheckContext(tolerance=1e-3)


def test_outputs_with_text_but_no_ids_are_never_equal() -> None:
    a = op("main", "a", [], text=" the answer is yes")
    b = op("cf-0", "a", [], text=" the answer is no")
    c = compare_tokens(a, b)
    assert c.outcome == "incomparable" and "no token ids" in c.reason


def test_a_counterfactual_over_id_less_outputs_is_unknown_not_pass() -> None:
    tenants = {"a": "t1", "b": "t2"}
    h = History([
        info("main", {"a": 0, "b": 0}, tenants=tenants),
        op("main", "a", [], text=" yes"), op("main", "b", [], text=" maybe", tenant="t2"),
        info("cf-0", {"a": 0, "b": 1}, tenants=tenants),
        op("cf-0", "a", [], text=" no"), op("cf-0", "b", [], text=" other", tenant="t2"),
        info("cf-1", {"a": 1, "b": 0}, tenants=tenants),
        op("cf-1", "a", [], text=" other"), op("cf-1", "b", [], text=" never", tenant="t2"),
    ])
    r = get("counterfactual-isolation")(h, CTX)
    assert r.verdict is Verdict.UNKNOWN
    assert r.evidence["incomparable"] == 2


def test_drift_needs_both_margins_below_the_tolerance() -> None:
    # The reference is near-tied between 6 and 9; the observed side is 12 nats sure of 9.
    ref = op("main", "a", [5, 6], tops=[{5: -0.1}, {6: -0.5, 9: -0.5001}])
    obs = op("cf-0", "a", [5, 9], tops=[{5: -0.1}, {9: -0.000001, 6: -12.0}])
    c = compare_tokens(ref, obs)
    assert c.outcome == "violation" and "observed margin" in c.reason
    # Near-tied on both sides: drift.
    obs_tied = op("cf-0", "a", [5, 9], tops=[{5: -0.1}, {9: -0.5, 6: -0.5001}])
    assert compare_tokens(ref, obs_tied).outcome == "drift"


def test_tokens_compared_stop_at_the_divergence() -> None:
    ref = op("main", "a", [5, 6, 7, 8], tops=[{5: -0.1}, {6: -0.5, 9: -0.5001}, {7: -1.0}, {8: -1.0}])
    obs = op("cf-0", "a", [5, 9, 7, 8], tops=[{5: -0.1}, {9: -0.5, 6: -0.5001}, {7: -1.0}, {8: -1.0}])
    assert compare_tokens(ref, obs).tokens_compared == 1
    assert compare_tokens(ref, ref).tokens_compared == 4


def _two_by_two(cf_runs: list[dict[str, int]]) -> History:
    """Users a1, a2 of tenant A and b1, b2 of tenant B, with identical outputs in every run."""
    tenants = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    recs: list[object] = [info("main", dict.fromkeys(tenants, 0), tenants=tenants)]
    recs += [op("main", u, [1, 2, 3], tenant=t) for u, t in tenants.items()]
    for i, variants in enumerate(cf_runs):
        recs.append(info(f"cf-{i}", variants, tenants=tenants))
        recs += [op(f"cf-{i}", u, [1, 2, 3], tenant=t) for u, t in tenants.items()]
    return History(recs)  # type: ignore[arg-type]


def test_position_halves_leave_pairs_unobserved_and_the_check_says_unknown() -> None:
    # The old plan: users by list position, [a1, b1] fixed then [a2, b2] fixed. (a1, a2) is same-tenant,
    # but (a1, b1) is never observable: b1 is fixed whenever a1 is.
    halves = [{"a1": 0, "b1": 0, "a2": 1, "b2": 1}, {"a1": 2, "b1": 2, "a2": 0, "b2": 0}]
    r = get("counterfactual-isolation")(_two_by_two(halves), CTX)
    assert r.verdict is Verdict.UNKNOWN
    assert (r.evidence["pairs_observable"], r.evidence["pairs_present"]) == (4, 8)
    assert any("never observable" in n for n in r.notes)


def test_tenant_splits_observe_every_pair_and_pass() -> None:
    splits = [{"a1": 0, "a2": 0, "b1": 1, "b2": 1}, {"a1": 2, "a2": 2, "b1": 0, "b2": 0}]
    r = get("counterfactual-isolation")(_two_by_two(splits), CTX)
    assert r.verdict is Verdict.PASS
    assert r.evidence["pairs_observable"] == r.evidence["pairs_present"] == 8
    assert r.evidence["tokens_compared"] == 4 * 3


def _counted(owned: bool | None, *, counted: float, reported: int, failed_prompt: int | None = None) -> History:
    from harness.history.record import HistoryHeader, MetricsSnapshot

    recs: list[object] = [HistoryHeader(stack_owned=owned), info("main", {"a": 0}),
                          MetricsSnapshot("before", 0.0, 0.0, 100.0)]
    recs.append(op("main", "a", [1], cached=reported, prompt=[1] * 64, invoke_s=1.0, complete_s=2.0))
    if failed_prompt is not None:
        recs.append(op("main", "a", [], turn=1, ok=False, status=500, cached=None, prompt=[1] * failed_prompt,
                       invoke_s=2.0, complete_s=3.0))
    recs.append(MetricsSnapshot("after", 10.0, 500.0, 100.0 + counted))
    return History(recs)  # type: ignore[arg-type]


def test_hidden_hits_fail_server_counters_when_the_harness_owns_the_server() -> None:
    check = get("server-counters")
    r = check(_counted(True, counted=64, reported=32), CTX)
    assert r.verdict is Verdict.FAIL and "hidden" in r.violations[0].message
    # Without ownership the surplus may be other clients' traffic: not applicable, as before.
    assert check(_counted(False, counted=64, reported=32), CTX).verdict is Verdict.NOT_APPLICABLE
    assert check(_counted(None, counted=64, reported=32), CTX).verdict is Verdict.NOT_APPLICABLE


def test_what_the_server_cannot_report_is_allowed_for() -> None:
    check = get("server-counters")
    # A failed request's 40-token prompt may have been counted: 32 reported + 40 >= 64 counted.
    assert check(_counted(True, counted=64, reported=32, failed_prompt=40), CTX).verdict is Verdict.PASS
    assert check(_counted(True, counted=32, reported=32), CTX).verdict is Verdict.PASS


def _concurrent_hit(other_domain_shares: bool) -> History:
    """b2 (salt "b") reports 32 cached tokens of a prefix that b1 (same salt) was prefilling when b2
    was sent: b1's first token arrived after b2's invoke. Optionally salt "a" held that prefix too."""
    shared = list(range(100, 132))
    recs: list[object] = [info("main", {"b1": 0, "b2": 0, "a1": 0}, tenants={"b1": "B", "b2": "B", "a1": "A"})]
    recs.append(op("main", "b1", [7], cached=0, prompt=[*shared, 1], cache_salt="b", invoke_s=1.0, ttft_s=0.5,
                   complete_s=2.0, stream=True))
    recs.append(op("main", "b2", [8], cached=32, prompt=[*shared, 2], cache_salt="b", invoke_s=1.1, complete_s=2.5))
    a_prompt = [*shared, 3] if other_domain_shares else [999, *shared]
    recs.append(op("main", "a1", [9], cached=0, prompt=a_prompt, cache_salt="a", tenant="A", invoke_s=0.0,
                   complete_s=0.5))
    return History(recs)  # type: ignore[arg-type]


def test_a_hit_only_a_running_request_explains_is_unchecked_when_another_domain_held_the_prefix() -> None:
    r = get("cache-accounting")(_concurrent_hit(other_domain_shares=True), CTX)
    assert r.verdict is Verdict.UNKNOWN
    assert (r.evidence["hits_unchecked"], r.evidence["hits_checked"]) == (1, 0)
    assert any("never excused" in n for n in r.notes)


def test_a_hit_no_other_domain_could_have_supplied_is_checked() -> None:
    r = get("cache-accounting")(_concurrent_hit(other_domain_shares=False), CTX)
    assert r.evidence["hits_unchecked"] == 0 and r.evidence["hits_checked"] == 1
    assert r.verdict is not Verdict.FAIL


def test_a_hit_without_prompt_ids_makes_accounting_unknown() -> None:
    h = History([info("main", {"a": 0}), op("main", "a", [1], cached=32, prompt=None)])  # type: ignore[arg-type]
    h.records[1].prompt_token_ids = None  # type: ignore[union-attr]
    r = get("cache-accounting")(h, CTX)
    assert r.verdict is Verdict.UNKNOWN and r.evidence["hits_without_ids"] == 1
