"""The incident rule without a server: bisection (single culprits and pairs), incident detection
from a history, attribution from the recorded replays, and the `availability` check's verdicts."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.checks.availability import availability
from harness.checks.base import CheckContext
from harness.history.record import History, Incident, Operation, Record, TriageReplay
from harness.incidents import atriage, attribute, find_incidents, stopped_at, stopped_text, triage
from harness.incidents.triage_run import control_request
from harness.verdict import Verdict
from tests.factories import info, op

CTX = CheckContext(tolerance=0.5)


# --- bisection ---------------------------------------------------------------------------------


def test_triage_finds_a_single_culprit_among_many() -> None:
    seen: list[list[int]] = []

    def replay(group: list[int]) -> bool:
        seen.append(group)
        return 13 in group

    out = triage(list(range(40)), replay)
    assert out.group == [13] and out.minimal and out.replays == len(seen)
    assert seen[0] == list(range(40))  # the whole group first


def test_triage_finds_a_pair_that_fails_only_together() -> None:
    def replay(group: list[str]) -> bool:
        return "c" in group and "f" in group

    out = triage(list("abcdefgh"), replay)
    assert out.group == ["c", "f"] and out.minimal


def test_triage_finds_a_pair_far_apart_in_a_large_group() -> None:
    out = triage(list(range(64)), lambda g: 2 in g and 61 in g)
    assert out.group == [2, 61] and out.minimal and out.replays <= 20


def test_triage_of_a_failure_that_does_not_recur_is_not_reproduced_after_its_attempts() -> None:
    calls: list[list[int]] = []
    out = triage([1, 2, 3], lambda g: calls.append(g) is not None, attempts=2)
    assert out.group is None and not out.reproduced and len(calls) == 2


def test_triage_tries_the_failed_requests_right_after_the_whole_group() -> None:
    seen: list[list[str]] = []

    def replay(group: list[str]) -> bool:
        seen.append(group)
        return "x" in group

    out = triage(["a", "b", "x", "c", "d", "e"], replay, hint=[2])
    assert out.group == ["x"] and seen[:2] == [["a", "b", "x", "c", "d", "e"], ["x"]] and out.replays == 2


def test_triage_out_of_budget_returns_the_smallest_group_so_far_not_minimal() -> None:
    out = triage(list(range(32)), lambda g: 5 in g and 30 in g, max_replays=8)
    assert out.group is not None and {5, 30} <= set(out.group) and len(out.group) < 32 and not out.minimal


def test_async_triage_proposes_the_same_groups() -> None:
    sync_seen: list[list[int]] = []
    async_seen: list[list[int]] = []

    def rule(g: list[int]) -> bool:
        return 3 in g and 9 in g

    def replay(g: list[int]) -> bool:
        sync_seen.append(g)
        return rule(g)

    async def areplay(g: list[int]) -> bool:
        async_seen.append(g)
        return rule(g)

    a = triage(list(range(12)), replay)
    b = asyncio.run(atriage(list(range(12)), areplay))
    assert a == b and sync_seen == async_seen and b.group == [3, 9]


# --- detection -----------------------------------------------------------------------------------


def _op(run: str, user: str, t0: float, t1: float, status: int | None = 200, tenant: str = "t1",
        **kw: Any) -> Operation:
    o = op(run, user, [1] if status == 200 else [], ok=status == 200, tenant=tenant, invoke_s=t0, complete_s=t1,
           status=status, error=None if status == 200 else kw.pop("error", "RemoteProtocolError: dropped"), **kw)
    return o


def _history(*records: Record) -> History:
    return History([info("main", {"a": 0, "b": 0}), *records])


def test_a_death_is_one_incident_however_many_requests_fail_after_it() -> None:
    ok = [_op("main", "a", 0, 1, turn=0), _op("main", "b", 0.5, 1.2, turn=0)]
    culprit = _op("adversary", "mallory", 1.0, 2.0, None, tenant="evil", op_id="adversary/s/crash")
    bystander = _op("main", "a", 1.5, 2.0, None, turn=1)
    after = [_op("adversary", "mallory", 2.0 + i, 2.1 + i, None, tenant="evil", op_id=f"adversary/s/c{i}")
             for i in range(50)]
    h = _history(*ok, culprit, bystander, *after,
                 Incident(what="server-died", at_s=99.0, message="exited with code -9"))
    [ev] = find_incidents(h)
    assert ev.what == "server-died" and len(ev.failed) == 52
    assert set(ev.in_flight) == {"adversary/s/crash", "main/s/a/1"}  # only what was in flight when it began
    assert ev.at_s == 2.0


def test_a_recovery_between_failures_makes_two_incidents() -> None:
    first = _op("adversary", "m", 0.0, 1.0, 500, tenant="evil", op_id="adversary/s/x")
    healthy = _op("main", "a", 1.1, 1.5)  # sent after the first failure, answered: the server recovered
    second = _op("adversary", "m", 2.0, 2.5, 500, tenant="evil", op_id="adversary/s/y")
    events = find_incidents(_history(first, healthy, second))
    assert [e.failed for e in events] == [("adversary/s/x",), ("adversary/s/y",)]
    assert [e.what for e in events] == ["5xx-run", "5xx-run"]


def test_failures_while_the_harness_restarted_the_server_are_not_incidents() -> None:
    during = _op("main", "a", 1.0, 3.0, None)
    restart = Incident(what="restart", at_s=2.0, caused_by_harness=True)
    assert find_incidents(_history(during, restart)) == []
    assert len(find_incidents(_history(during))) == 1


def test_a_4xx_and_a_slow_answer_are_not_incidents() -> None:
    slow = _op("main", "a", 0.0, 50.0)
    rejected = _op("adversary", "m", 0.0, 0.1, 400, tenant="evil", op_id="adversary/s/bad")
    assert find_incidents(_history(slow, rejected)) == []


def test_a_timeout_is_an_incident_of_its_own_kind() -> None:
    hung = _op("main", "a", 0.0, 60.0, None, error="ReadTimeout: timed out")
    [ev] = find_incidents(_history(hung))
    assert ev.what == "timeout"


# --- attribution and the availability check ---------------------------------------------------------


def _crash_history(*replays: TriageReplay) -> History:
    hostile = _op("adversary", "mallory", 0.0, 1.0, None, tenant="evil", op_id="adversary/s/crash")
    other = _op("adversary", "mallory", 0.2, 1.0, None, tenant="evil", op_id="adversary/s/fine")
    victim = _op("main", "a", 0.1, 1.0, None, tenant="acme")
    return _history(hostile, other, victim, *replays)


def test_reproduced_incident_is_one_fail_naming_the_minimal_group() -> None:
    replays = [TriageReplay(1.0, ["adversary/s/crash", "main/s/a/0", "adversary/s/fine"], True),
               TriageReplay(1.0, ["adversary/s/crash", "adversary/s/fine"], True),
               TriageReplay(1.0, ["adversary/s/crash"], True, server_down=True)]  # a crash: no chance
    h = _crash_history(*replays)
    [a] = attribute(h)
    assert a.group == ("adversary/s/crash",) and a.minimal
    r = availability(h, CTX)
    assert r.verdict is Verdict.FAIL and len(r.violations) == 1
    v = r.violations[0]
    assert v.op_ids == ["adversary/s/crash"] and v.details["fire_together"] and v.details["failed"] == 3
    assert r.evidence["incidents"] == 1 and r.evidence["incidents_reproduced"] == 1


def test_a_pair_is_minimal_only_when_each_member_alone_was_shown_not_to_reproduce() -> None:
    pair = ["adversary/s/crash", "adversary/s/fine"]
    confirmed = [TriageReplay(1.0, pair, True, confirming=True)] * 2
    shown = _crash_history(TriageReplay(1.0, pair, True), TriageReplay(1.0, pair[:1], False),
                           TriageReplay(1.0, pair[1:], False), *confirmed)
    [a] = attribute(shown)
    assert a.group == tuple(pair) and a.minimal
    unshown = _crash_history(TriageReplay(1.0, pair, True), TriageReplay(1.0, pair[:1], False), *confirmed)
    [b] = attribute(unshown)
    assert b.group == tuple(pair) and not b.minimal
    assert "not shown minimal" in availability(unshown, CTX).violations[0].message


def test_an_incident_that_did_not_reproduce_is_unknown_not_fail() -> None:
    h = _crash_history(TriageReplay(1.0, ["adversary/s/crash", "main/s/a/0", "adversary/s/fine"], False),
                       TriageReplay(1.0, ["adversary/s/crash", "main/s/a/0", "adversary/s/fine"], False))
    r = availability(h, CTX)
    assert r.verdict is Verdict.UNKNOWN and not r.violations
    assert any("not attributable to any input" in n and "history kept" in n for n in r.notes)


def test_a_failure_that_recurs_only_by_chance_is_not_pinned_on_a_request() -> None:
    """A server that answers 503 at random (the selftest's `flaky`) can make a bisection end on an
    innocent request; the group's confirmation replays must all reproduce it, else UNKNOWN."""
    lucky = ["adversary/s/crash"]
    h = _crash_history(TriageReplay(1.0, lucky, True), TriageReplay(1.0, lucky, True, confirming=True),
                       TriageReplay(1.0, lucky, False, confirming=True))
    [a] = attribute(h)
    assert a.group is None
    assert availability(h, CTX).verdict is Verdict.UNKNOWN
    unconfirmed = _crash_history(TriageReplay(1.0, lucky, True))  # never confirmed: not attributed either
    assert attribute(unconfirmed)[0].group is None
    confirmed = _crash_history(TriageReplay(1.0, lucky, True), *[TriageReplay(1.0, lucky, True, confirming=True)] * 2)
    assert attribute(confirmed)[0].group == tuple(lucky)


def test_a_group_is_not_blamed_when_a_plain_request_alone_fails_too() -> None:
    """A router whose circuit breakers are open answers everyone 503 for a minute: every replay of
    any group "reproduces". The control (a plain request of the run, alone) failing too means the
    target was refusing everyone: not attributed. A control that succeeds leaves the group blamed."""
    lucky = ["adversary/s/crash"]
    confirmed = [TriageReplay(1.0, lucky, True), *[TriageReplay(1.0, lucky, True, confirming=True)] * 2]
    refused = _crash_history(*confirmed, TriageReplay(1.0, ["main/s/a/0"], True, note="statuses {'503': 1}",
                                                      control=True))
    [a] = attribute(refused)
    assert a.group is None and "refusing everyone" in a.why_not and "main/s/a/0" in a.why_not
    assert availability(refused, CTX).verdict is Verdict.UNKNOWN
    served = _crash_history(*confirmed, TriageReplay(1.0, ["main/s/a/0"], False, control=True))
    assert attribute(served)[0].group == tuple(lucky)


def test_the_control_is_a_plain_request_outside_the_group_of_the_same_scenario() -> None:
    hostile = _op("adversary", "mallory", 0.0, 1.0, None, tenant="evil", op_id="adversary/s/crash")
    served = _op("adversary", "mallory", 0.1, 0.5, tenant="evil", op_id="adversary/s/fine")  # hostile: never
    failed = _op("main", "b", 0.1, 1.0, None, tenant="acme")
    other = _op("main", "a", 0.2, 0.6, tenant="acme", scenario="t", op_id="main/t/a/0")
    plain = _op("main", "a", 0.3, 0.7, tenant="acme")
    h = _history(hostile, served, failed, other, plain)
    assert control_request(h, [hostile]) is plain  # the group's scenario first
    assert control_request(h, [hostile, plain]) is other  # else any plain request that succeeded
    assert control_request(h, [hostile, plain, other]) is None


def test_an_incident_never_replayed_is_unknown_with_the_reason() -> None:
    h = _crash_history(TriageReplay(1.0, [], False, note="not replayed: needs the explicit opt-in --replay-incidents"))
    r = availability(h, CTX)
    assert r.verdict is Verdict.UNKNOWN and any("--replay-incidents" in n for n in r.notes)
    bare = availability(_crash_history(), CTX)  # no triage record at all: still never PASS
    assert bare.verdict is Verdict.UNKNOWN


def test_harm_to_a_victim_names_the_hostile_request_as_the_cause() -> None:
    victim = _op("main", "a", 0.0, 1.0, 500, tenant="acme")
    hostile = _op("adversary", "mallory", 0.1, 0.5, 200, tenant="evil", op_id="adversary/s/h")
    pair = ["main/s/a/0", "adversary/s/h"]
    h = _history(victim, hostile, TriageReplay(1.0, pair, True),
                 TriageReplay(1.0, ["main/s/a/0"], False), TriageReplay(1.0, ["adversary/s/h"], False),
                 *[TriageReplay(1.0, pair, True, confirming=True)] * 2)
    r = availability(h, CTX)
    [v] = r.violations
    assert r.verdict is Verdict.FAIL and v.message.startswith("harm to another tenant")
    assert v.details["causing_tenants"] == ["evil"] and v.details["harmed_tenants"] == ["acme"]
    assert v.details["status"] == 500 and v.details["minimal"]


def test_no_adversary_and_no_incident_is_not_applicable_and_a_clean_adversary_passes() -> None:
    assert availability(_history(_op("main", "a", 0, 1)), CTX).verdict is Verdict.NOT_APPLICABLE
    clean = availability(_history(_op("adversary", "m", 0, 1, 400, tenant="evil", op_id="adversary/s/x")), CTX)
    assert clean.verdict is Verdict.PASS and clean.exercised == 1


def test_stopped_at_names_scenario_run_and_op_index() -> None:
    h = _history(_op("main", "a", 0, 1), _op("main", "b", 0, 1.5))
    where = stopped_at(h, "target stopped answering: ConnectError\nmore")
    assert where == {"reason": "target stopped answering: ConnectError", "scenario": "s", "run": "main",
                     "op_index": 2, "last_op": "main/s/b/0", "requests_recorded": 2}
    assert stopped_text(where).startswith("stopped at scenario s, run main, after op 2")
    assert stopped_at(h, None) is None
