"""A fleet's checks against the fake fleet (tests/fake_fleet.py: fake replicas behind a router
that indexes prompt prefixes without the salt, as vllm-router's cache_aware policy does), without
vLLM: an honest fleet PASSes, whether the router steers by prefix or spreads round-robin; a
router that forgets the salt, or replicas sharing a KV tier that ignores it, FAIL cache
accounting with the hit that only another tenant's request explains. The selftest's own row
machinery (`run_fault`, `judge`) takes the fleet as its base, as `kvbleed selftest --stack
vllm-fleet` does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rich.console import Console

from harness.client import TargetClient
from harness.engine import RunOptions
from harness.frontends.commands.selftest import citing_checks, judge, run_fault
from harness.frontends.runs import run_files
from harness.history.record import Operation, Role
from harness.probe.capabilities import Capabilities
from harness.probe.needs import lacking, probe_target
from harness.result import RunResult
from harness.verdict import Verdict
from tests.fake_fleet import FakeFleet, Policy, Tier

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
SALTED = "salted-tenants.yaml"  # two tenants, two users each, one system prompt common to all, per-tenant salts


def run_on(fleet: FakeFleet, out: Path) -> RunResult:
    with fleet:
        return run_files([LIBRARY / SALTED], fleet, RunOptions(), out, console=Console(stderr=True, quiet=True))


def replica_of(result: RunResult) -> dict[str, str]:
    from harness.checks.accounting import replicas_of

    served = replicas_of(result.history)
    assert served is not None, "a fleet's history says which replica served each request"
    return served


def main_ops(result: RunResult) -> list[Operation]:
    return [o for o in result.history.ops if o.role is Role.MAIN]


@pytest.mark.parametrize("policy", ["prefix", "round_robin"])
def test_an_honest_fleet_passes(policy: Policy, tmp_path: Path) -> None:
    result = run_on(FakeFleet(policy=policy), tmp_path)
    assert result.verdict is Verdict.PASS, result.reasons
    accounting = result.check("cache-accounting")
    assert accounting is not None and accounting.verdict is Verdict.PASS
    assert accounting.evidence["hits_checked"] > 0 and accounting.evidence["hits_unchecked"] == 0
    assert accounting.evidence["ops_without_replica"] == 0
    served = replica_of(result)
    placed = {served[o.op_id] for o in main_ops(result)}
    # prefix: the router follows the common system prompt across salts (steering, no sharing);
    # round-robin: the tenants' requests are spread over both replicas.
    assert len(placed) == (1 if policy == "prefix" else 2)


def _flagged(result: RunResult) -> list[Operation]:
    accounting = result.check("cache-accounting")
    assert accounting is not None and accounting.verdict is Verdict.FAIL, result.reasons
    by_id = {o.op_id: o for o in result.history.ops}
    return [by_id[i] for v in accounting.violations for i in v.op_ids]


def _other_salt_explains(op: Operation, result: RunResult, same_replica: bool) -> bool:
    """Some earlier request of another salt had sent op's first block (on op's replica, or on
    another one)."""
    served = replica_of(result)
    block = (op.prompt_token_ids or [])[:4]
    return any(o.cache_salt != op.cache_salt and o.complete_s <= op.invoke_s and o.run == op.run
               and (o.prompt_token_ids or [])[:4] == block
               and (served.get(o.op_id) == served.get(op.op_id)) == same_replica
               for o in result.history.ops)


def test_a_router_that_forgets_the_salt_fails_accounting(tmp_path: Path) -> None:
    result = run_on(FakeFleet(policy="prefix", forget_salt=True), tmp_path)
    assert result.verdict is Verdict.FAIL
    flagged = _flagged(result)
    assert flagged and all(_other_salt_explains(op, result, same_replica=True) for op in flagged)


def test_a_round_robin_router_that_forgets_the_salt_fails_accounting(tmp_path: Path) -> None:
    """Round-robin puts every other request on the other replica: the scenario's users take turns
    (acme, globex, globex, acme, acme, globex) so that each replica serves both tenants, whatever
    the router's starting position, and the unsalted common system prompt is a cross-tenant hit."""
    result = run_on(FakeFleet(policy="round_robin", forget_salt=True), tmp_path)
    assert result.verdict is Verdict.FAIL
    served = replica_of(result)
    tenants_on = {r: {o.tenant for o in main_ops(result) if served[o.op_id] == r} for r in set(served.values())}
    assert all(t == {"acme", "globex"} for t in tenants_on.values()), tenants_on
    flagged = _flagged(result)
    assert flagged and all(_other_salt_explains(op, result, same_replica=True) for op in flagged)


@pytest.mark.parametrize("tier", ["shared-unsalted"])
def test_replicas_sharing_an_unsalted_tier_fail_accounting(tier: Tier, tmp_path: Path) -> None:
    """Round-robin puts the two tenants' first requests on different replicas; the shared tier
    serves the second from the first's blocks: a hit no request on its own replica explains."""
    result = run_on(FakeFleet(policy="round_robin", tier=tier), tmp_path)
    assert result.verdict is Verdict.FAIL
    flagged = _flagged(result)
    assert any(_other_salt_explains(op, result, same_replica=False) for op in flagged)


def test_the_selftest_rows_on_a_fleet(tmp_path: Path) -> None:
    """`salt-drop` through the prefix-routing fleet (the router forgetting the salt) is detected
    by cache accounting citing an injected request; a benign control on the same fleet is good."""
    with FakeFleet(policy="prefix") as fleet:
        caps = asyncio.run(_probe(fleet.base_url))
        missing = lacking(caps)
        for name, want in (("salt-drop", "detected by cache-accounting"), ("noise", "")):
            out, injected = run_fault(name, fleet.base_url, LIBRARY, tmp_path / name, 0, [SALTED], base=fleet)
            checks = {r.name: r.verdict.value for r in out.checks}
            j = judge(name, checks, out.verdict.value, missing, injections=injected, error=out.error,
                      skipped=out.skipped or None, cited=citing_checks(out, name))
            assert injected > 0 and j.good and j.applicable, (name, j, checks)
            assert j.reason == want


async def _probe(url: str) -> Capabilities:
    async with TargetClient(url) as client:
        return await probe_target(client)
