"""A fleet under test with real processes: two embedded vLLM replicas behind vllm-router.

`test_fleet_smoke` is the one fleet run of `make test` (about 4 minutes on 2 cores, most of it
starting the replicas): one salted scenario through the router, every request's replica
established from the replicas' ledgers, and every check holding. The rest is the fleet matrix
(`make fleet-matrix`, README "A fleet under test"), skipped unless HARNESS_FLEET_MATRIX=1: the
steering probe per policy and a replica killed mid-run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from harness.engine import RunOptions
from harness.frontends.replica_death import replica_death_row
from harness.frontends.runs import run_files
from harness.history.record import ReplicaAttribution
from harness.probe.fleet import steering
from harness.stacks.fleet import FleetStack
from harness.verdict import Verdict

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
needs_router = pytest.mark.skipif(importlib.util.find_spec("vllm_router") is None,
                                  reason="vllm-router: the `fleet` extra (make setup)")
matrix = pytest.mark.skipif(os.environ.get("HARNESS_FLEET_MATRIX") != "1",
                            reason="the fleet matrix: make fleet-matrix (HARNESS_FLEET_MATRIX=1)")


pytestmark = [pytest.mark.integration]


@needs_router
def test_fleet_smoke(tmp_path: Path) -> None:
    fleet = FleetStack(replicas=2, router_policy="cache_aware")
    try:
        fleet.start()  # started here, so the run leaves it up for the steering probe
        out = run_files([LIBRARY / "salted-tenants.yaml"], fleet, RunOptions(policy="salted"), tmp_path)
        steer = steering(fleet, trials=3).summary()
    finally:
        fleet.stop()
    report = json.loads((tmp_path / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert out.verdict is Verdict.PASS, json.dumps(report["checks"], indent=1)[:4000]
    accounting = checks["cache-accounting"]["evidence"]
    assert accounting["replicas"] >= 1 and accounting["ops_without_replica"] == 0, accounting
    attributions = [e for e in out.history.events if isinstance(e, ReplicaAttribution)]
    assert attributions and all(op.op_id in attributions[0].served for op in out.history.ops), \
        "a request whose replica the ledgers do not name"
    assert steer["placed"] == 3 and steer["cross_salt_hits"] == 0, steer


@needs_router
@matrix
@pytest.mark.matrix
@pytest.mark.parametrize("policy", ["cache_aware", "kv_aware", "round_robin"])
def test_steering_per_policy(policy: str) -> None:
    """Reports whether tenant A's prompt steers tenant B's routing; a cache hit across salts FAILs."""
    fleet = FleetStack(replicas=2, router_policy=policy)
    try:
        fleet.start()
        summary = steering(fleet, trials=8).summary()
    finally:
        fleet.stop()
    print(json.dumps({k: v for k, v in summary.items() if k != "trial_replicas"}))
    assert summary["placed"] == 8 and summary["cross_salt_hits"] == 0, summary


@needs_router
@matrix
@pytest.mark.matrix
def test_replica_killed_mid_run(tmp_path: Path) -> None:
    """The selftest's fleet row: replica r1 kills itself at its 3rd request; no request is answered
    with another tenant's data (no leak check FAILs), the death is on record as the harness's, and
    the verdict is UNKNOWN or FAIL by cause (`harness.frontends.replica_death`)."""
    row = replica_death_row(2, LIBRARY, tmp_path)
    print(json.dumps(row)[:2000])
    assert row["good"], row["reason"]
    assert row["verdict"] in (Verdict.UNKNOWN.value, Verdict.FAIL.value) and row["injections"] >= 1
