"""Known findings: real, acknowledged server bugs that a run shows apart instead of failing on.

A baseline file (YAML list) names each finding with the checks, scenarios and server it applies
to. This module only matches violations to findings (`match_known`); what a match does to the
verdict is decided in one place, `harness.verdict.decide`: matching violations stay in the
report, with their reproducers, under `known_findings`, and no longer turn the verdict to FAIL.
A known finding that applies but that the run did not provoke is reported too, with what its own
reproducer (`reproduce:`, run by `harness.known_repro`) showed: still there, fixed?, or not
re-checked. Nothing else is suppressed: any other violation still FAILs the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.adversary.coverage import parse as parse_case
from harness.checks.compare import Divergence
from harness.history.record import History, Operation, Role
from harness.verdict import CheckResult, Violation


class ReproRequest(BaseModel):
    """One request of a finding's reproducer: its name (for the expectations), path and JSON body.
    Every `{nonce}` in a string of the body becomes a fresh random hex string per request and trial
    (e.g. a fresh cache salt, so no prefix cache is involved)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = "/v1/completions"
    body: dict[str, Any]


class ReproExpect(BaseModel):
    """What a reproducer's answers must show: each named request's status among the given ones
    (null: no answer), and pairs of requests whose output token ids are the same or differ."""

    model_config = ConfigDict(extra="forbid")

    statuses: dict[str, list[int | None]] = Field(default_factory=dict)
    tokens_same: list[tuple[str, str]] = Field(default_factory=list)
    tokens_differ: list[tuple[str, str]] = Field(default_factory=list)

    def names(self) -> set[str]:
        return set(self.statuses) | {n for pair in (*self.tokens_same, *self.tokens_differ) for n in pair}


class Reproduce(BaseModel):
    """A finding's own machine-runnable reproducer (run by `harness.known_repro`): steps in order,
    the requests of each step fired together; in each trial, `control` must hold (else the trial
    shows nothing either way: the server is not in the state the bug needs) and `shows` is the bug."""

    model_config = ConfigDict(extra="forbid")

    steps: list[list[ReproRequest]] = Field(min_length=1)
    control: ReproExpect = Field(default_factory=ReproExpect)
    shows: ReproExpect
    trials: int = Field(1, ge=1, le=5, description="trials at most; the first that shows the bug ends it")
    takes_server_down: bool = Field(
        False, description="the bug kills the server: run only against a server the harness owns and can restart")

    @model_validator(mode="after")
    def _names_exist(self) -> Reproduce:
        names = [r.name for step in self.steps for r in step]
        if len(names) != len(set(names)):
            raise ValueError(f"reproducer request names must be unique: {names}")
        unknown = (self.control.names() | self.shows.names()) - set(names)
        if unknown:
            raise ValueError(f"reproducer expectations name requests it does not send: {sorted(unknown)}")
        if not (self.shows.statuses or self.shows.tokens_differ or self.shows.tokens_same):
            raise ValueError("a reproducer must say what shows the bug (shows: statuses or tokens)")
        return self

    def requests(self) -> list[ReproRequest]:
        return [r for step in self.steps for r in step]


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
    incidents: list[str] | None = Field(
        None, description="availability: only incidents of these kinds (server-died, connection-lost, timeout, "
        "5xx-run; details['incident'])")
    group_has_field: list[str] | None = Field(
        None, description="only violations whose group (its operations' recorded request bodies) has a request "
        "that sets one of these fields to a non-null value")
    group_only_fields: list[str] | None = Field(
        None, description="only violations whose group's hostile requests vary these fields alone (the adversary's "
        "case names what each one varied): a group whose requests also vary another field could be that field's "
        "bug, so it is not absorbed")
    group_size_max: int | None = Field(
        None, ge=1, description="only violations whose group has at most this many requests (a larger group is "
        "another bug)")
    details: str = ""
    reproducer: str = ""
    reproduce: Reproduce | None = Field(
        None, description="a machine-runnable reproducer: decides whether the finding still reproduces when a "
        "run's own traffic did not provoke it (harness.known_repro)")

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
        if self.incidents is not None and v.details.get("incident") not in self.incidents:
            return False
        if self.group_size_max is not None and not 0 < len(v.op_ids) <= self.group_size_max:
            return False
        ops = _ops_of(v, history)
        sees_ops = (self.roles is not None or self.models is not None or self.group_has_field is not None
                    or self.group_only_fields is not None)
        if sees_ops and (not v.op_ids or len(ops) != len(set(v.op_ids))):
            return False  # an operation the signature must see is missing: never absorbed blind
        if self.roles is not None and not all(o.role in self.roles for o in ops):
            return False
        if self.models is not None and not all((o.served_model or o.model) in self.models for o in ops):
            return False
        if self.group_has_field is not None and not any(
                o.request.get(f) is not None for o in ops for f in self.group_has_field):
            return False
        if self.group_only_fields is not None and not _varies_only(ops, set(self.group_only_fields)):
            return False
        if _warm_reference(v, history):
            return False  # a reference that may have run warm cannot show which bug this is
        return not self.batched_with_other_model or _batched_with_other_model(v, history)


def _ops_of(v: Violation, history: History) -> list[Operation]:
    wanted = set(v.op_ids)
    return [o for o in history.ops if o.op_id in wanted]


def _varies_only(ops: list[Operation], allowed: set[str]) -> bool:
    """Every hostile request among `ops` varied only fields in `allowed` (by its case name: a value, an
    identical group or a pairwise row; identity confusion and headers are never allowed)."""
    for o in ops:
        if o.role.hostile:
            case = parse_case(o)
            if case["kind"] in ("confusion", "header") or any(f not in allowed for f, _ in case["parts"]):
                return False
    return True


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


class Status(StrEnum):
    """Whether a known finding that applies to a run still reproduces."""

    REPRODUCED = "reproduced"
    """The run's own traffic provoked it (its violations are matched)."""
    STILL_SHOWS = "still-shows"
    """The run did not provoke it; its reproducer, run afterwards, still shows it."""
    FIXED = "fixed?"
    """The run did not provoke it and its reproducer no longer shows it (every trial ran cleanly)."""
    NOT_RECHECKED = "not-rechecked"
    """The run did not provoke it and its reproducer was not run, or showed nothing either way."""


@dataclass(frozen=True)
class Recheck:
    """What a finding's own reproducer showed after a run that did not provoke it (plain data)."""

    status: Status
    why: str = ""
    """Why it was not re-checked, or what the reproducer saw (statuses, trials)."""
    trials: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "why": self.why, "trials": self.trials}

    @classmethod
    def from_json(cls, d: Any) -> Recheck | None:
        if not isinstance(d, dict) or d.get("status") not in {s.value for s in Status}:
            return None
        return cls(Status(d["status"]), str(d.get("why", "")), int(d.get("trials") or 0))


NOT_RUN = Recheck(Status.NOT_RECHECKED, "its reproducer was not run in this run")


@dataclass
class KnownOutcome:
    finding: KnownFinding
    violations: list[Violation] = field(default_factory=list)
    recheck: Recheck | None = None
    """What its reproducer showed (set by `harness.known_repro` when the run did not provoke it)."""

    @property
    def status(self) -> Status:
        if self.violations:
            return Status.REPRODUCED
        return (self.recheck or NOT_RUN).status

    @property
    def status_text(self) -> str:
        """The finding's state in words, as every reporter shows it."""
        status = self.status
        if status is Status.REPRODUCED:
            return f"reproduced in this run ({len(self.violations)} violation(s))"
        why = (self.recheck or NOT_RUN).why
        if status is Status.STILL_SHOWS:
            return f"not provoked by this run's traffic; its reproducer still shows it ({why})"
        if status is Status.FIXED:
            return f"fixed? its reproducer no longer shows it ({why})"
        return f"not re-checked: {why}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.finding.id, "title": self.finding.title, "reproduced": bool(self.violations),
                "status": self.status.value, "status_text": self.status_text,
                "recheck": self.recheck.to_json() if self.recheck else None,
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
