"""The oracle's references, as runs to drive next to the main run.

- Counterfactual re-runs: the re-drawn users' private content (and their tenants' secrets)
  re-drawn at the same lengths while shared prefixes and the schedule stay the same; the fewest
  re-runs in which every user of one tenant is held fixed while every user of each other tenant
  is re-drawn (`harness.plan.cover`).
- Solo replay: each conversation alone with no cache reuse (fresh salt per request where the
  target honours salts, else a cache reset before each request, else a fresh server process
  before each request where the harness launched the server, else stated as possibly warm).
"""

from __future__ import annotations

import hashlib
import re

from harness.driver.driver import RunSpec
from harness.plan.cover import covering_splits
from harness.probe.needs import Isolation
from harness.scenario.model import Scenario
from harness.scenario.render import plan_scenario


def counterfactual_variants(scenario: Scenario) -> list[dict[str, int]]:
    """Per re-run, user -> content variant: 0 (held fixed) or a fresh variant (re-drawn). The
    re-runs are the fewest that make every cross-tenant (victim, source) pair observable
    (`harness.plan.cover`); a tenant's users are held fixed or re-drawn together."""
    users = [u.name for u in scenario.users]
    splits = covering_splits({u.name: u.tenant for u in scenario.users})
    return [{u: 0 if u in fixed else i + 1 for u in users} for i, fixed in enumerate(splits)]


def tenant_salts(scenario: Scenario, nonce: str, policy: str) -> dict[str, str | None]:
    """user -> cache salt. `shared-prefix`: the scenario's salts as written; `salted`: every tenant
    sends its own salt (the scenario's, else one derived from the tenant and this run's nonce)."""
    run_tag = hashlib.sha256(nonce.encode()).hexdigest()[:8]
    out: dict[str, str | None] = {}
    for u in scenario.users:
        salt = scenario.tenant(u.tenant).cache_salt
        if policy == "salted" and salt is None:
            salt = "tenant-" + re.sub(r"[^A-Za-z0-9_.-]", "_", u.tenant)[:64] + "-" + run_tag
        out[u.name] = salt
    return out


def plan_runs(scenario: Scenario, nonce: str, models: dict[str, str], solo_isolation: Isolation,
              counterfactual: bool = True, solo: bool = True, policy: str = "shared-prefix") -> list[RunSpec]:
    salts = tenant_salts(scenario, nonce, policy)
    domains: dict[str, object] = {u: (models[u], salts[u]) for u in models}
    runs = [RunSpec("main", scenario, plan_scenario(scenario, nonce), nonce, models, salts,
                    requires_cross_user_hits=scenario.requires_cross_user_hits(domains))]
    if counterfactual:
        for i, variants in enumerate(counterfactual_variants(scenario)):
            fixed = sorted(u for u, v in variants.items() if v == 0)
            runs.append(RunSpec(f"cf-{i}", scenario, plan_scenario(scenario, nonce, variants), nonce, models, salts,
                                note=f"held fixed: {', '.join(fixed)}"))
    if solo:
        note = {"salt": "fresh cache salt per request", "reset": "prefix-cache reset before each request",
                "restart": "fresh server process before each request (the harness launched the target)",
                "warm": "target offers no salt or reset: the reference may have run warm"}.get(solo_isolation, "")
        runs.append(RunSpec("solo", scenario, plan_scenario(scenario, nonce), nonce, models, salts,
                            isolation=solo_isolation, note=note))
    return runs
