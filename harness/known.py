"""Known findings: real, acknowledged server bugs that a run shows apart instead of failing on.

A baseline file (YAML list) names each finding with the checks, scenarios and server it applies
to. This module only matches violations to findings (`match_known`); what a match does to the
verdict is decided in one place, `harness.verdict.decide`: matching violations stay in the
report, with their reproducers, under `known_findings`, and no longer turn the verdict to FAIL.
A known finding that did not reproduce is reported too (it may have been fixed). Nothing else
is suppressed: any other violation still FAILs the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.checks.compare import Divergence
from harness.history.record import History, Operation, Role
from harness.verdict import CheckResult, Violation


class KnownFinding(BaseModel):
    """One acknowledged server bug and its exact signature: a violation is absorbed only when it
    matches every field given (a different bug in the same scenario on the same server must still
    FAIL). Fields left out match anything, so a finding should name as many as its bug shows."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    checks: list[str] = Field(min_length=1)
    scenarios: list[str] = Field(min_length=1)
    server_version: str | None = None
    users: list[str] | None = Field(None, description="only violations of these users (default: any)")
    roles: list[Role] | None = Field(
        None, description="only violations whose operations all have these roles (main, counterfactual, solo, "
        "adversary, adversary-alone)")
    models: list[str] | None = Field(
        None, description="only violations whose operations were all for these models or adapters (as served)")
    divergence: list[Divergence] | None = Field(
        None, description="output checks: only these kinds of divergence (e.g. outside-reference-top: the observed "
        "token is not among the reference's top logprobs)")
    statuses: list[int | None] | None = Field(
        None, description="only violations whose response status is one of these (null: no response)")
    op_id_pattern: str | None = Field(None, description="regex every op id of the violation must match")
    batched_with_other_model: bool = Field(
        False, description="only violations where one of the compared requests overlapped in time with a "
        "request for another model or adapter (the root cause of a batch-mixing bug)")
    details: str = ""
    reproducer: str = ""

    def applies(self, server_version: str | None) -> bool:
        return self.server_version is None or server_version == self.server_version

    def matches(self, v: Violation, history: History) -> bool:
        if not (v.check in self.checks and v.scenario in self.scenarios):
            return False
        if self.users is not None and not set(v.users) <= set(self.users):
            return False
        if self.op_id_pattern is not None and not (
                v.op_ids and all(re.search(self.op_id_pattern, i) for i in v.op_ids)):
            return False
        if self.divergence is not None and v.details.get("divergence") not in self.divergence:
            return False
        if self.statuses is not None and ("status" not in v.details or v.details["status"] not in self.statuses):
            return False
        ops = _ops_of(v, history)
        if (self.roles is not None or self.models is not None) and len(ops) != len(v.op_ids):
            return False  # an operation the signature must see is missing: never absorbed blind
        if self.roles is not None and not all(o.role in self.roles for o in ops):
            return False
        if self.models is not None and not all((o.served_model or o.model) in self.models for o in ops):
            return False
        if _warm_reference(v, history):
            return False  # a reference that may have run warm cannot show which bug this is
        return not self.batched_with_other_model or _batched_with_other_model(v, history)


def _ops_of(v: Violation, history: History) -> list[Operation]:
    wanted = set(v.op_ids)
    return [o for o in history.ops if o.op_id in wanted]


def _warm_reference(v: Violation, history: History) -> bool:
    """A cache-transparency violation against a solo reference that may have run warm."""
    if v.check != "cache-transparency":
        return False
    solo = history.run_info(v.scenario, "solo")
    return solo is None or solo.isolation == "warm"


def _batched_with_other_model(v: Violation, history: History) -> bool:
    ops = {o.op_id: o for o in history.ops}
    for op_id in v.op_ids:
        op = ops.get(op_id)
        if op is None:
            continue
        model = op.served_model or op.model
        if any((o.served_model or o.model) != model and o.ok and o.invoke_s < op.complete_s
               and op.invoke_s < o.complete_s for o in history.ops):
            return True
    return False


KNOWN_SCHEMA_VERSION = 2
"""Version 2: a mapping {schema_version: 2, findings: [...]}; version 1 (still read): a bare list."""


def load_known_findings(path: Path) -> list[KnownFinding]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or []
        if isinstance(data, dict):
            version = data.get("schema_version")
            if not isinstance(version, int) or version > KNOWN_SCHEMA_VERSION:
                raise ValueError(f"schema_version {version!r} is not one this harness reads "
                                 f"(1 or {KNOWN_SCHEMA_VERSION}); upgrade the harness")
            data = data.get("findings") or []
        return [KnownFinding.model_validate(d) for d in data]
    except (OSError, yaml.YAMLError, ValidationError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid known-findings file: {exc}") from None


@dataclass
class KnownOutcome:
    finding: KnownFinding
    violations: list[Violation] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.finding.id, "title": self.finding.title, "reproduced": bool(self.violations),
                "violations": len(self.violations), "details": self.finding.details,
                "reproducer": self.finding.reproducer,
                "messages": [f"[{v.scenario}] {v.message}" for v in self.violations[:20]]}


def match_known(results: list[CheckResult], findings: list[KnownFinding], server_version: str | None,
                history: History) -> list[KnownOutcome]:
    """Which violations each finding that applies to this run matches (the first matching finding
    takes a violation). Results are not changed: `harness.verdict.decide` moves the matched
    violations out of their checks."""
    scenarios_run = set(history.scenarios())
    active = [f for f in findings if f.applies(server_version) and set(f.scenarios) & scenarios_run]
    outcomes = {f.id: KnownOutcome(f) for f in active}
    for r in results:
        for v in r.violations:
            f = next((f for f in active if f.matches(v, history)), None)
            if f is not None:
                outcomes[f.id].violations.append(v)
    return list(outcomes.values())


def known_violations(outcomes: list[KnownOutcome]) -> list[Violation]:
    return [v for k in outcomes for v in k.violations]
