"""A fleet under test, without a server: which replica served each request (the replicas' ledgers,
`stacks.replica_tag`), cache accounting per replica, and how the fleet launches its processes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.checks.accounting import accounting, replicas_of
from harness.checks.base import CheckContext
from harness.history.record import HistoryWriter, Operation, ReplicaAttribution, read_history
from harness.stacks import make_stack, stack_names
from harness.stacks.fleet import FleetStack, RouterProcess
from harness.stacks.replica_tag import REPLICA_HEADER, tag
from harness.verdict import Verdict
from tests.factories import history, info, op

CTX = CheckContext(tolerance=0.1)
SHARED = list(range(100, 164))  # two 32-token blocks both users' prompts start with


def two_users(hit: int = 32) -> tuple[Operation, Operation]:
    """u1 sends the shared blocks cold; u2 (same model, no salt) sends them later and hits `hit`."""
    first = op("main", "u1", [7], prompt=[*SHARED, 1], cached=0, invoke_s=0.0, complete_s=1.0, ttft_s=0.5)
    second = op("main", "u2", [8], prompt=[*SHARED, 2], cached=hit, invoke_s=2.0, complete_s=3.0, ttft_s=0.5)
    return first, second


def attribution(served: dict[str, str], ambiguous: list[str] | None = None) -> ReplicaAttribution:
    return ReplicaAttribution(at_s=9.0, replicas=["r0", "r1"], served=served, ambiguous=ambiguous or [])


def run_accounting(*records: Any) -> Any:
    return accounting(history(info("main", {"u1": 0, "u2": 0}), *records), CTX)


def test_a_hit_explained_only_by_another_replica_fails() -> None:
    first, second = two_users()
    result = run_accounting(first, second, attribution({first.op_id: "r0", second.op_id: "r1"}))
    assert result.verdict is Verdict.FAIL
    assert [v.op_ids for v in result.violations] == [[second.op_id]]
    assert result.evidence["replicas"] == 2


def test_a_hit_explained_on_the_same_replica_passes() -> None:
    first, second = two_users()
    result = run_accounting(first, second, attribution({first.op_id: "r1", second.op_id: "r1"}))
    assert result.verdict is Verdict.PASS, result.notes
    assert result.evidence["hits_checked"] == 1


def test_a_hit_in_flight_on_its_replica_is_checked_when_only_its_own_domain_elsewhere_could_explain_it() -> None:
    """u2's hit on r0 is explained only by u1, still in prefill on r0 when u2 was sent; the same
    blocks were in r1's cache long before (u0). Same model and salt on r1 is not another tenant:
    the hit is checked. With u0 another tenant's (a salt), the hit could hide a leak: unchecked."""
    for salt, verdict in ((None, Verdict.PASS), ("acme", Verdict.UNKNOWN)):
        early = op("main", "u0", [6], prompt=[*SHARED, 0], cached=0, invoke_s=0.0, complete_s=1.0, ttft_s=0.5,
                   cache_salt=salt)
        running = op("main", "u1", [7], prompt=[*SHARED, 1], cached=0, invoke_s=1.9, complete_s=3.0, ttft_s=0.9)
        hit = op("main", "u2", [8], prompt=[*SHARED, 2], cached=64, invoke_s=2.0, complete_s=3.5, ttft_s=0.5)
        result = accounting(history(info("main", {"u0": 0, "u1": 0, "u2": 0}), early, running, hit,
                                    attribution({early.op_id: "r1", running.op_id: "r0", hit.op_id: "r0"})), CTX)
        assert result.verdict is verdict, (salt, result.notes)
        assert result.evidence["hits_unchecked"] == (0 if salt is None else 1)


def test_a_single_server_history_is_unchanged() -> None:
    first, second = two_users()
    assert run_accounting(first, second).verdict is Verdict.PASS


def test_a_hit_with_no_established_replica_is_unknown_never_explained_fleet_wide() -> None:
    first, second = two_users()
    for served, ambiguous in (({first.op_id: "r0"}, []),  # the hit reached no ledger
                              ({first.op_id: "r0", second.op_id: "r0"}, [second.op_id])):  # a router retry
        result = run_accounting(first, second, attribution(served, ambiguous))
        assert result.verdict is Verdict.UNKNOWN, result.notes
        assert result.evidence["hits_unchecked"] == 1


def test_a_source_with_no_established_replica_blocks_a_pass() -> None:
    first, second = two_users()
    result = run_accounting(first, second, attribution({second.op_id: "r1"}))
    assert result.verdict is Verdict.UNKNOWN
    assert result.evidence["ops_without_replica"] == 1


def test_attributions_that_disagree_make_the_op_ambiguous() -> None:
    a = attribution({"main/s/u1/0": "r0", "main/s/u2/0": "r1"})
    b = ReplicaAttribution(at_s=10.0, replicas=["r0", "r1"], served={"main/s/u1/0": "r1"})
    assert replicas_of(history(a, b)) == {"main/s/u2/0": "r1"}
    assert replicas_of(history()) is None


def test_the_attribution_record_round_trips(tmp_path: Path) -> None:
    rec = attribution({"main/s/u1/0": "r0"}, ["main/s/u2/0"])
    with HistoryWriter(tmp_path / "h.jsonl") as w:
        w.append(rec)
    assert [r for r in read_history(tmp_path / "h.jsonl") if isinstance(r, ReplicaAttribution)] == [rec]


def test_ledgers_give_one_replica_per_op_and_flag_retries(tmp_path: Path) -> None:
    fleet = FleetStack(replicas=2, router_policy="round_robin")
    fleet.ledger_dir = tmp_path
    lines = {"r0": ["main/s/u1/0", "main/s/u3/0"], "r1": ["main/s/u2/0", "main/s/u3/0"]}
    for name, ops in lines.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"replica": name, "op": o}) + "\n" for o in ops)
                                                + '{"replica": "r0", "op": "half-writ')  # a line in progress
    rec = fleet.attribution()
    assert rec.served == {"main/s/u1/0": "r0", "main/s/u2/0": "r1"}
    assert rec.ambiguous == ["main/s/u3/0"]
    assert fleet.attribution().served == {}  # read once: the next call sees only new lines


def test_the_router_command_carries_the_policy_and_the_kv_event_sources() -> None:
    router = RouterProcess(port=9000, worker_urls=["http://a:1", "http://b:2"], policy="kv_aware",
                           kv_event_sources={"http://a:1": "tcp://127.0.0.1:5"}, model_dir=Path("/m"))
    cmd = router.command()
    assert cmd[cmd.index("--policy") + 1] == "kv_aware"
    assert cmd[cmd.index("--worker-urls") + 1:cmd.index("--worker-urls") + 3] == ["http://a:1", "http://b:2"]
    assert "http://a:1=tcp://127.0.0.1:5" in cmd


def test_the_fleet_is_a_registered_stack_with_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "vllm-fleet" in stack_names()
    monkeypatch.setenv("HARNESS_FLEET_REPLICAS", "3")
    monkeypatch.setenv("HARNESS_FLEET_POLICY", "kv_aware")
    stack = make_stack(None, "vllm-fleet")
    assert isinstance(stack, FleetStack)
    assert (stack.size, stack.policy, stack.traits.replicas) == (3, "kv_aware", 3)
    assert stack.replica_names() == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match="router policy"):
        FleetStack(router_policy="nearest")


def test_the_replica_tag_writes_the_ledger_and_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "r1.jsonl"
    monkeypatch.setenv("HARNESS_REPLICA", "r1")
    monkeypatch.setenv("HARNESS_REPLICA_LEDGER", str(ledger))
    response = SimpleNamespace(headers={})

    async def call_next(request: Any) -> Any:
        return response

    def request(op_id: str | None) -> Any:
        headers = {"x-harness-op": op_id} if op_id else {}
        return SimpleNamespace(headers=headers, url=SimpleNamespace(path="/v1/completions"))

    assert asyncio.run(tag(request("main/s/u1/0"), call_next)) is response
    asyncio.run(tag(request(None), call_next))  # an unlabelled request (health checks): no line
    assert response.headers[REPLICA_HEADER] == "r1"
    assert [json.loads(line)["op"] for line in ledger.read_text().splitlines()] == ["main/s/u1/0"]


def test_server_counters_through_a_router_are_not_the_fleets() -> None:
    """The router answers /metrics from one replica: the cross-check would compare one replica's
    counter with the whole fleet's hits. Without a fleet the same history FAILs."""
    from harness.checks.counters import counters
    from harness.history.record import HistoryHeader, MetricsSnapshot

    first, second = two_users()
    records: list[Any] = [HistoryHeader(stack_owned=True), info("main", {"u1": 0, "u2": 0}),
                          MetricsSnapshot(label="before", at_s=-1.0, queries=0.0, hits=0.0), first, second,
                          MetricsSnapshot(label="after", at_s=10.0, queries=0.0, hits=0.0)]
    assert counters(history(*records), CTX).verdict is Verdict.FAIL
    fleet = counters(history(*records, attribution({first.op_id: "r0", second.op_id: "r0"})), CTX)
    assert fleet.verdict is Verdict.NOT_APPLICABLE and "one replica" in fleet.notes[0]


def test_a_fleet_whose_ledgers_stayed_empty_still_says_it_is_a_fleet(tmp_path: Path) -> None:
    """If no request reached a ledger (a router that dropped the op header), the history must still
    carry the fleet's record, so that accounting fails closed instead of explaining fleet-wide."""
    fleet = FleetStack(replicas=2)
    fleet.ledger_dir = tmp_path
    records = fleet.events()
    assert [type(r) for r in records] == [ReplicaAttribution]
    first, second = two_users()
    assert run_accounting(first, second, *records).verdict is Verdict.UNKNOWN


def test_a_failed_source_without_ids_takes_those_of_an_identical_request() -> None:
    """Seen under the drift control: a victim answered 500 by the proxy (after the server computed
    it) came back without prompt ids, so its A/A repeat's hit on the same prompt looked unexplained
    and cache accounting FAILed a correct server. A failed request takes the ids of an identical
    request of the run, as a hit without ids does; it may then explain a hit."""
    body = {"prompt": "doc question"}
    failed = op("main", "u1", [], ok=False, cached=None, request=body, invoke_s=0.0, complete_s=1.0)
    failed = replace(failed, prompt_token_ids=None)
    repeat = op("aa-1", "u1", [8], prompt=[*SHARED, 1], cached=64, request=body, invoke_s=2.0, complete_s=3.0,
                ttft_s=0.5)
    result = accounting(history(info("main", {"u1": 0}), failed, repeat), CTX)
    assert result.verdict is Verdict.PASS, result.notes
    assert result.evidence["hits_ids_from_identical_request"] == 1
