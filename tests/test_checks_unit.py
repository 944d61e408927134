"""Pure logic of the comparison rule and the checks, on hand-made histories."""

from __future__ import annotations

from typing import Any

from harness.checks.base import CheckContext, run_checks
from harness.checks.compare import compare_tokens
from harness.history.record import History, HistoryWriter, Operation, RunInfo, read_history
from harness.verdict import Verdict, overall

CTX = CheckContext(tolerance=1e-3)


def op(run: str, user: str, tokens: list[int], turn: int = 0, tops: list[dict[int, float]] | None = None,
       tenant: str = "t1", ok: bool = True, cached: int | None = 0, prompt: list[int] | None = None,
       text: str = "", **kw: Any) -> Operation:
    return Operation(
        run=run, scenario="s", op_id=f"{run}/s/{user}/{turn}", user=user, tenant=tenant, turn=turn, model="m",
        endpoint="completions", stream=False, cache_salt=None, request={}, invoke_s=0.0, complete_s=1.0, ok=ok,
        output_token_ids=tokens, top_logprobs=tops or [{t: -1.0} for t in tokens], cached_tokens=cached,
        prompt_token_ids=prompt if prompt is not None else [1, 2, 3], output_text=text, **kw,
    )


def info(run: str, variants: dict[str, int], isolation: str = "shared", **kw: Any) -> RunInfo:
    return RunInfo(run=run, scenario="s", nonce=" n", seed=0, variants=variants,
                   canaries=kw.pop("canaries", {u: [] for u in variants}),
                   tenants=kw.pop("tenants", {u: "t1" for u in variants}), models={u: "m" for u in variants},
                   isolation=isolation, **kw)


def test_compare_equal_drift_violation() -> None:
    ref = op("main", "a", [5, 6, 7], tops=[{5: -0.1}, {6: -0.50000, 9: -0.50001}, {7: -0.2}])
    same = op("cf-0", "a", [5, 6, 7])
    near = op("cf-0", "a", [5, 9, 7], tops=[{5: -0.1}, {9: -0.50000, 6: -0.50001}, {7: -0.2}])
    far = op("cf-0", "a", [5, 8, 7], tops=[{5: -0.1}, {8: -0.1, 6: -3.0}, {7: -0.2}])
    assert compare_tokens(ref, same).outcome == "equal"
    c = compare_tokens(ref, near)
    assert (c.outcome, c.position, c.reference_token, c.observed_token) == ("drift", 1, 6, 9)
    assert compare_tokens(ref, far).outcome == "violation"  # 8 not among the reference's top logprobs
    wide = op("main", "a", [5, 6, 7], tops=[{5: -0.1}, {6: -0.1, 9: -2.0}, {7: -0.2}])
    assert compare_tokens(wide, near).outcome == "violation"  # both in top-k, but margin 1.9 >= tolerance
    assert compare_tokens(ref, op("cf-0", "a", [5, 6])).outcome == "violation"  # truncated


def test_counterfactual_compares_only_fixed_users_and_stops_at_first_divergence() -> None:
    h = History([
        info("main", {"a": 0, "b": 0}), op("main", "a", [1, 2]), op("main", "a", [3, 4], turn=1),
        op("main", "b", [7, 7]),
        info("cf-0", {"a": 0, "b": 1}), op("cf-0", "a", [1, 9]), op("cf-0", "a", [5, 5], turn=1),
        op("cf-0", "b", [8, 8]),  # b was re-drawn: not compared
    ])
    [r] = run_checks(h, CTX, ["counterfactual-isolation"])
    assert r.verdict is Verdict.FAIL and r.exercised == 1 and len(r.violations) == 1
    v = r.violations[0]
    assert v.users == ["a"] and v.details["turn"] == 0 and v.details["position"] == 1
    assert v.op_ids == ["main/s/a/0", "cf-0/s/a/0"]


def test_transparency_pass_and_unknown_when_nothing_compared() -> None:
    h = History([info("main", {"a": 0}), op("main", "a", [1, 2]), info("solo", {"a": 0}, "salt"),
                 op("solo", "a", [1, 2])])
    [r] = run_checks(h, CTX, ["cache-transparency"])
    assert (r.verdict, r.exercised) == (Verdict.PASS, 1)
    h2 = History([info("main", {"a": 0}), op("main", "a", [1, 2], ok=False), info("solo", {"a": 0}, "salt"),
                  op("solo", "a", [1, 2])])
    [r2] = run_checks(h2, CTX, ["cache-transparency"])
    assert r2.verdict is Verdict.UNKNOWN


def test_canary_flags_foreign_canary_only() -> None:
    runinfo = info("main", {"a": 0, "b": 0}, canaries={"a": [" kem bosu daru lit"], "b": [" zo ri"]},
                   tenants={"a": "acme", "b": "globex"})
    own = op("main", "a", [1], tenant="acme", text=" kem bosu daru lit again")  # own canary: fine
    leak = op("main", "b", [1], tenant="globex", text=" x kem  bosu daru lit y")
    [r] = run_checks(History([runinfo, own, leak]), CTX, ["canary"])
    assert r.verdict is Verdict.FAIL and [v.users for v in r.violations] == [["b", "a"]]
    [ok] = run_checks(History([runinfo, own]), CTX, ["canary"])
    assert ok.verdict is Verdict.PASS


def test_exercised_requires_cross_user_hits() -> None:
    main = info("main", {"a": 0, "b": 0}, requires_cross_user_hits=True)
    a0 = op("main", "a", [9], prompt=list(range(40)), cached=0)
    a1 = op("main", "a", [8], turn=1, prompt=[*range(40), 9, 50, 51], cached=32)  # own history explains
    b0 = op("main", "b", [7], prompt=list(range(40)), cached=32)  # only another user explains
    [hit] = run_checks(History([main, a0, a1, b0]), CTX, ["exercised"])
    assert (hit.verdict, hit.exercised) == (Verdict.PASS, 1)
    b0_cold = op("main", "b", [7], prompt=list(range(40)), cached=0)
    [miss] = run_checks(History([main, a0, a1, b0_cold]), CTX, ["exercised"])
    assert miss.verdict is Verdict.UNKNOWN
    blind = [main, op("main", "a", [9], cached=None), op("main", "b", [9], cached=None)]
    [r] = run_checks(History(blind), CTX, ["exercised"])
    assert r.verdict is Verdict.UNKNOWN and "no cached-token counts" in r.notes[0]


def test_requests_errors_make_unknown_and_overall() -> None:
    h = History([info("main", {"a": 0}), op("main", "a", [1], ok=False, status=500, error="boom")])
    [r] = run_checks(h, CTX, ["requests"])
    assert r.verdict is Verdict.UNKNOWN and "HTTP 500" in r.notes[0]
    assert overall([]) is Verdict.UNKNOWN


def test_history_jsonl_roundtrip(tmp_path) -> None:
    recs = [info("main", {"a": 0}), op("main", "a", [1, 2], tops=[{1: -0.5, 3: -1.0}, {2: -0.1}])]
    with HistoryWriter(tmp_path / "h.jsonl") as w:
        for r in recs:
            w.append(r)
    assert read_history(tmp_path / "h.jsonl") == recs


def acc_op(user: str, prompt: list[int], cached: int, invoke: float, complete: float, salt: str | None = None,
           out: list[int] | None = None, turn: int = 0) -> Operation:
    o = op("main", user, out or [900 + invoke], turn=turn, prompt=prompt, cached=cached)
    o.invoke_s, o.complete_s, o.cache_salt = invoke, complete, salt
    return o


def test_accounting_explains_hits_by_same_domain_prefixes() -> None:
    shared = list(range(64))
    a = acc_op("a", [*shared, 1000, 1001], 0, 0.0, 1.0)
    b = acc_op("b", [*shared, 2000], 64, 2.0, 3.0)  # 64 explained by a's prompt
    [r] = run_checks(History([info("main", {"a": 0, "b": 0}), a, b]), CTX, ["cache-accounting"])
    assert r.verdict is Verdict.PASS and r.exercised == 1


def test_accounting_flags_phantom_and_cross_salt_hits() -> None:
    shared = list(range(64))
    a = acc_op("a", [*shared, 1000], 0, 0.0, 1.0, salt="s1")
    phantom = acc_op("b", [5] * 70, 64, 2.0, 3.0, salt="s1")  # nothing shares its prefix
    cross = acc_op("c", [*shared, 3000], 64, 2.0, 3.0, salt="s2")  # only another salt explains it
    [r] = run_checks(History([info("main", {"a": 0, "b": 0, "c": 0}), a, phantom, cross]), CTX, ["cache-accounting"])
    assert r.verdict is Verdict.FAIL
    assert sorted(v.users[0] for v in r.violations) == ["b", "c"]


def test_accounting_concurrency_and_multi_turn() -> None:
    shared = list(range(96))
    running = acc_op("a", [*shared, 1], 0, 0.0, 10.0)  # still running when b hits its blocks
    b = acc_op("b", [*shared, 2], 96, 1.0, 2.0)
    later = acc_op("c", [*shared, 3], 96, 1.0, 2.0)
    later.invoke_s = 0.5
    # a second turn hits its own first turn's prompt *and output* tokens
    t0 = acc_op("d", [7] * 40, 0, 20.0, 21.0, out=[8] * 30)
    t1 = acc_op("d", [7] * 40 + [8] * 30 + [9] * 5, 64, 22.0, 23.0, turn=1)
    early = acc_op("e", [*shared, 4], 96, 0.0, 0.1)
    early.invoke_s = -1.0  # completed before anything sharing its prefix was sent
    hist = History([info("main", {u: 0 for u in "abcde"}), running, b, later, t0, t1])
    [r] = run_checks(hist, CTX, ["cache-accounting"])
    assert r.verdict is Verdict.PASS, [v.message for v in r.violations]
    [bad2] = run_checks(History([info("main", {"e": 0}), early, acc_op("f", [*shared, 5], 0, 5.0, 6.0)]), CTX,
                        ["cache-accounting"])
    assert bad2.verdict is Verdict.FAIL and bad2.violations[0].users == ["e"]


def test_accounting_needs_positive_control_under_salts() -> None:
    shared = list(range(64))
    a = acc_op("a", [*shared, 1], 0, 0.0, 1.0, salt="s1")
    a2 = acc_op("a", [*shared, 1, 5, 6], 64, 2.0, 3.0, salt="s1", turn=1)  # own hit only
    [r] = run_checks(History([info("main", {"a": 0}), a, a2]), CTX, ["cache-accounting"])
    assert r.verdict is Verdict.UNKNOWN and "positive control" in " ".join(r.notes)


def test_server_counters_agree_or_fail() -> None:
    from harness.history.record import MetricsSnapshot

    a = acc_op("a", list(range(40)), 32, 1.0, 2.0)
    def hist(hits_after: float) -> History:
        return History([info("main", {"a": 0}), MetricsSnapshot("before", 0.0, 10, 100), a,
                        MetricsSnapshot("after", 3.0, 50, hits_after)])
    [ok] = run_checks(hist(132), CTX, ["server-counters"])
    assert ok.verdict is Verdict.PASS
    [phantom] = run_checks(hist(100), CTX, ["server-counters"])  # reported 32 hits the server never counted
    assert phantom.verdict is Verdict.FAIL
    [busy] = run_checks(hist(500), CTX, ["server-counters"])  # other traffic moved the counter
    assert busy.verdict is Verdict.NOT_APPLICABLE
    [none] = run_checks(History([info("main", {"a": 0}), a]), CTX, ["server-counters"])
    assert none.verdict is Verdict.NOT_APPLICABLE  # nothing to cross-check


def test_server_counters_add_up_the_lives_of_a_server_the_harness_restarted() -> None:
    """A cold solo reference restarts the server: each life's counter delta is added up, so a
    server that hides hits (reports fewer than it counted) still FAILs on an owned server."""
    from harness.history.record import LIFE_END, LIFE_START, HistoryHeader, Incident, MetricsSnapshot

    a = acc_op("a", list(range(40)), 32, 1.0, 2.0)
    b = acc_op("a", list(range(40)), 0, 5.0, 6.0)  # the second life: cold

    def hist(end_hits: float, second_life_hits: float, bracketed: bool = True) -> History:
        records: list[Any] = [HistoryHeader(stack_owned=True), info("main", {"a": 0}),
                              MetricsSnapshot("before", 0.0, 10, 100), a]
        if bracketed:
            records.append(MetricsSnapshot(LIFE_END, 3.0, 20, end_hits))
        records.append(Incident("restart", 3.5, caused_by_harness=True, message="restarted by the harness"))
        if bracketed:
            records.append(MetricsSnapshot(LIFE_START, 4.0, 0, 0))
        records += [b, MetricsSnapshot("after", 7.0, 5, second_life_hits)]
        return History(records)

    [ok] = run_checks(hist(132, 0), CTX, ["server-counters"])
    assert ok.verdict is Verdict.PASS and "2 server lives" in " ".join(ok.notes)
    [hidden] = run_checks(hist(132, 64), CTX, ["server-counters"])  # 64 counted in life 2, 0 reported
    assert hidden.verdict is Verdict.FAIL
    [unbracketed] = run_checks(hist(132, 64, bracketed=False), CTX, ["server-counters"])
    assert unbracketed.verdict is Verdict.NOT_APPLICABLE  # the counters cannot be added up


def test_canary_rest_after_fishing_tail_counts_as_leak() -> None:
    phrase = " w1 w2 w3 w4 w5 w6 w7 w8"
    runinfo = info("main", {"a": 0, "b": 0}, canaries={"a": [phrase], "b": []}, tenants={"a": "acme", "b": "globex"})
    leak = op("main", "b", [1], tenant="globex", text=" w3 w4 w5 w6 w7 w8 more")  # prompt ended in " w1 w2"
    near = op("main", "b", [1], tenant="globex", text=" w3 w4 w5 x w7 w8")
    [r] = run_checks(History([runinfo, leak]), CTX, ["canary"])
    assert r.verdict is Verdict.FAIL
    [r2] = run_checks(History([runinfo, near]), CTX, ["canary"])
    assert r2.verdict is Verdict.PASS
