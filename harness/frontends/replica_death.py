"""The selftest's fleet row `replica-death`: one replica of a fresh fleet kills itself mid-run.

Run by `harness selftest --stack vllm-fleet` after the proxy faults (the fleet of those rows is
stopped first: two fleets do not share 2 cores well). Replica r1 kills its own process group when
its K-th request arrives (`FleetStack(kill_replica_at=...)`: an exact request, so it replays), in
`salted-tenants` under round-robin routing, so both replicas serve both tenants. The row is good
when the death is on record as an incident the harness caused, no output or cache check FAILs (no
request was answered with another tenant's data or blocks), and the run is not PASS (requests
failed: UNKNOWN, or FAIL by a cause the report names). docs/design.md, "Incidents".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from harness.engine import RunOptions
from harness.frontends.runs import run_files
from harness.history.record import Incident
from harness.stacks.fleet import FleetStack
from harness.verdict import Verdict

ROW = "replica-death"
SCENARIO = "salted-tenants.yaml"
DYING = ("r1", 3)
"""Replica r1 dies at its 3rd request: after the probe's and the first requests' hits, mid-run."""
LEAK_CHECKS = frozenset({"counterfactual-isolation", "cache-transparency", "canary", "cache-accounting"})
"""Checks whose FAIL would mean a request was answered with another tenant's data or blocks."""


def replica_death_row(replicas: int, scenarios: Path, out_dir: Path) -> dict[str, Any]:
    """Launch a fleet of `replicas` whose r1 dies mid-run, run the scenario, judge the row."""
    fleet = FleetStack(replicas=replicas, router_policy="round_robin", kill_replica_at=DYING)
    try:
        fleet.start()
        out = run_files([scenarios / SCENARIO], fleet, RunOptions(policy="salted"), out_dir,
                        console=Console(stderr=True, quiet=True))
    finally:
        fleet.stop()
    deaths = [e for e in out.history.events if isinstance(e, Incident) and e.caused_by_harness
              and "killed itself" in e.message]
    checks = {r.name: r.verdict.value for r in out.checks}
    leaked = sorted(c for c, v in checks.items() if v == "fail" and c in LEAK_CHECKS)
    problems = ([] if deaths else ["the replica's death is not on record"]) + \
               ([f"{', '.join(leaked)} FAILed: a request answered with another tenant's data"] if leaked else []) + \
               (["the run PASSed although a replica died under it"] if out.verdict is Verdict.PASS else [])
    return {"kind": "fleet", "verdict": out.verdict.value, "run_verdict": out.verdict.value,
            "good": not problems, "applicable": True,
            "reason": "; ".join(problems) or f"death on record ({len(deaths)}), no leak, run {out.verdict.value}",
            "needs": [], "lacking": [], "injections": len(deaths), "checks": checks,
            "detected_by": [c for c, v in checks.items() if v == "fail"], "requests_to_detection": None,
            "requests": out.meta.requests, "error": out.error}
