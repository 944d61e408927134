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

from harness.history.record import History
from harness.verdict import CheckResult, Violation


class KnownFinding(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    checks: list[str] = Field(min_length=1)
    scenarios: list[str] = Field(min_length=1)
    server_version: str | None = None
    users: list[str] | None = Field(None, description="only violations of these users (default: any)")
    op_id_pattern: str | None = Field(None, description="regex every op id of the violation must match")
    batched_with_other_model: bool = Field(
        False, description="only violations where one of the compared requests overlapped in time with a "
        "request for another model or adapter (the root cause of a batch-mixing bug)")
    details: str = ""
    reproducer: str = ""

    def applies(self, server_version: str | None) -> bool:
        return self.server_version is None or server_version == self.server_version

    def matches(self, v: Violation, history: History) -> bool:
        if self.batched_with_other_model and not _batched_with_other_model(v, history):
            return False
        return (v.check in self.checks and v.scenario in self.scenarios
                and (self.users is None or set(v.users) <= set(self.users))
                and (self.op_id_pattern is None
                     or (bool(v.op_ids) and all(re.search(self.op_id_pattern, i) for i in v.op_ids))))


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
