"""`RunResult`: everything one isolation run produced, in memory, typed.

The engine returns it; the reporters are functions of it; `RunResult.save(folder)` writes
report.json (schema version 2) and history.jsonl, and `RunResult.load(folder)` reads them back
(also a version-1 report.json, the layout without "schema_version") so `harness report` can
re-render a saved run. Report schema: {"schema_version", "verdict", "reasons", "checks",
"metadata"}; version 1 is the same without the first two keys and is read as such.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.evidence import assess
from harness.history.record import History, HistoryWriter, read_history
from harness.incidents import incident_summary, stopped_at
from harness.known import KnownFinding, KnownOutcome, Recheck
from harness.scenario.model import Scenario
from harness.verdict import CheckResult, Decision, Verdict, Violation

REPORT_SCHEMA_VERSION = 2


class ReportSchemaError(ValueError):
    """A report folder this harness cannot read (missing, not JSON, or a newer schema)."""


@dataclass
class RunMeta:
    """What a run was and where it ran (report.json's "metadata"; the keys of schema 1 kept)."""

    harness_version: str = ""
    target: str = ""
    """The base URL the run drove (the stack's, once started)."""
    stack: str = ""
    """The stack's name ("embedded vLLM", "llama.cpp server", "external server")."""
    embedded: bool = False
    """The harness launched the server (the stack is owned)."""
    policy: str = "shared-prefix"
    tolerance: float = 0.0
    started_unix: float = 0.0
    scenario_files: list[str] = field(default_factory=list)
    seeds: dict[str, int] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, Any] | None = None
    solo_isolation: str | None = None
    server_version: str | None = None
    embedded_startup_s: float | None = None
    duration_s: float = 0.0
    requests: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of a loaded report this version does not know (kept, written back)."""

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if out["embedded_startup_s"] is None:
            del out["embedded_startup_s"]
        if out["capabilities"] is None:
            del out["capabilities"]
        if out["solo_isolation"] is None:
            del out["solo_isolation"]
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, d: dict[str, Any], derived: frozenset[str] = frozenset()) -> RunMeta:
        """From report.json's metadata; keys in `derived` (held elsewhere in RunResult) are dropped."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in derived}
        return cls(**known, extra=extra)


_DERIVED = frozenset({"known_findings", "error", "reproducers", "skipped_scenarios", "stopped", "incidents"})
"""metadata keys written from RunResult's own fields, not from RunMeta."""


@dataclass
class RunResult:
    """One run: its decision, per-check results (as reported: known findings moved out), the
    known-finding matches, skipped scenarios, the early-stop error, the history and scenarios."""

    decision: Decision
    known: list[KnownOutcome]
    history: History
    meta: RunMeta
    scenarios: list[Scenario] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """scenario name -> why the target could not run it."""
    error: str | None = None
    report_dir: Path | None = None
    """Where the run's files are (set by the engine when it streamed the history, by `save`,
    by `reporters.write_all` and by `load`)."""
    reproducers: list[str] = field(default_factory=list)
    """Reproducer folders written by `reporters.write_all` (or read back by `load`)."""

    @property
    def verdict(self) -> Verdict:
        return self.decision.verdict

    @property
    def reasons(self) -> list[str]:
        return self.decision.reasons

    @property
    def checks(self) -> list[CheckResult]:
        return self.decision.checks

    @property
    def results(self) -> list[CheckResult]:
        """Alias of `checks` (the name the old `RunOutcome` used)."""
        return self.decision.checks

    @property
    def known_reproduced(self) -> list[KnownOutcome]:
        """The known findings (acknowledged server bugs) this run reproduced."""
        return [k for k in self.known if k.violations]

    @property
    def headline(self) -> str:
        """The verdict in words as every reporter shows it: a PASS with reproduced known findings
        says so ("PASS, with 2 known server bugs reproduced"), never a bare all-clear."""
        n = len(self.known_reproduced)
        if self.verdict is Verdict.PASS and n:
            return f"PASS, with {n} known server bug{'' if n == 1 else 's'} reproduced"
        return self.verdict.value.upper()

    @property
    def exit_code(self) -> int:
        return self.decision.exit_code

    @property
    def violations(self) -> list[Violation]:
        return [v for r in self.checks for v in r.violations]

    @property
    def known_violations(self) -> list[Violation]:
        return [v for k in self.known for v in k.violations]

    def check(self, name: str) -> CheckResult | None:
        return next((r for r in self.checks if r.name == name), None)

    # --- report.json ----------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        meta = self.meta.to_json()
        meta["known_findings"] = [k.to_json() for k in self.known]
        meta["duration_s"], meta["error"], meta["requests"] = self.meta.duration_s, self.error, self.meta.requests
        meta["reproducers"] = list(self.reproducers)
        if self.skipped:
            meta["skipped_scenarios"] = dict(self.skipped)
        stopped = stopped_at(self.history, self.error)
        if stopped is not None:
            meta["stopped"] = stopped  # where the run stopped: scenario, run, op index, reason
        incidents = incident_summary(self.history)
        if incidents:
            meta["incidents"] = incidents  # one entry per loss of service (harness.incidents)
        return meta

    def to_json(self) -> dict[str, Any]:
        """report.json's content (schema version 2)."""
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "checks": [
                {"name": r.name, "description": r.description, "verdict": r.verdict.value, "exercised": r.exercised,
                 "drift": r.drift, "violations": [asdict(v) for v in r.violations], "notes": r.notes,
                 "evidence": dict(r.evidence)}
                for r in self.checks
            ],
            "minimum_evidence": [asdict(row) for row in self.decision.evidence],
            "metadata": self.metadata(),
        }

    @property
    def report(self) -> dict[str, Any]:
        """report.json's content as a dict (the old `RunOutcome.report`)."""
        return self.to_json()

    def write_report_json(self, folder: Path) -> Path:
        path = Path(folder) / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str))
        return path

    def save(self, folder: Path) -> Path:
        """Write report.json and history.jsonl (unless the engine already streamed it there)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        hist = folder / "history.jsonl"
        if self.report_dir is None or Path(self.report_dir).resolve() != folder.resolve() or not hist.is_file():
            hist.unlink(missing_ok=True)
            with HistoryWriter(hist) as w:
                for rec in self.history.records:
                    w.append(rec)
        self.report_dir = folder
        return self.write_report_json(folder)

    @classmethod
    def load(cls, folder: Path) -> RunResult:
        """A saved run: report.json (schema 1 or 2) and history.jsonl (empty if absent)."""
        folder = Path(folder)
        path = folder / "report.json"
        if not path.is_file():
            raise ReportSchemaError(f"{folder} holds no report.json: not a harness report folder")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportSchemaError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_json(data, folder)

    @classmethod
    def from_json(cls, data: Any, folder: Path | None = None) -> RunResult:
        where = folder / "report.json" if folder else "report"
        if not isinstance(data, dict) or "checks" not in data or "verdict" not in data:
            raise ReportSchemaError(f"{where} is not a harness report (no verdict and checks)")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > REPORT_SCHEMA_VERSION:
            raise ReportSchemaError(f"{where} has report schema version {version!r}; this harness reads 1 to "
                                    f"{REPORT_SCHEMA_VERSION}: upgrade the harness to read it")
        checks = [_check_from_json(c) for c in data.get("checks") or []]
        raw = str(data.get("verdict", "unknown")).lower()
        verdict = Verdict(raw) if raw in {v.value for v in Verdict} else Verdict.UNKNOWN
        meta_d = data.get("metadata") or {}
        hist = folder / "history.jsonl" if folder else None
        history = History(read_history(hist) if hist is not None and hist.is_file() else [])
        return cls(
            decision=Decision(verdict, list(data.get("reasons") or []), checks, assess(checks)),
            known=[_known_from_json(k) for k in meta_d.get("known_findings") or []],
            history=history, meta=RunMeta.from_json(meta_d, _DERIVED),
            skipped=dict(meta_d.get("skipped_scenarios") or {}), error=meta_d.get("error"),
            report_dir=folder, reproducers=[str(p) for p in meta_d.get("reproducers") or []],
        )


def _check_from_json(c: dict[str, Any]) -> CheckResult:
    raw = str(c.get("verdict", "unknown"))
    return CheckResult(
        name=str(c.get("name", "")), verdict=Verdict(raw) if raw in {v.value for v in Verdict} else Verdict.UNKNOWN,
        exercised=int(c.get("exercised") or 0), drift=int(c.get("drift") or 0),
        violations=[Violation(**v) for v in c.get("violations") or []], notes=list(c.get("notes") or []),
        description=str(c.get("description", "")), evidence=dict(c.get("evidence") or {}))


def _known_from_json(k: dict[str, Any]) -> KnownOutcome:
    """A known finding as a report saved it. The report keeps the count and the first 20 messages,
    not the violations themselves: these come back as message-only violations."""
    finding = KnownFinding.model_construct(id=str(k.get("id", "")), title=str(k.get("title", "")), checks=[],
                                           scenarios=[], details=str(k.get("details", "")),
                                           reproducer=str(k.get("reproducer", "")))
    messages = [str(m) for m in k.get("messages") or []]
    count = max(int(k.get("violations") or 0), len(messages))
    messages += [""] * (count - len(messages))  # the report lists the first 20 messages only
    return KnownOutcome(finding, [_message_only(m) for m in messages], Recheck.from_json(k.get("recheck")))


def _message_only(text: str) -> Violation:
    """A violation from a saved "[scenario] message" line."""
    m = re.fullmatch(r"\[([^\]]*)\] (.*)", text, re.S)
    scenario, message = (m.group(1), m.group(2)) if m else ("", text)
    return Violation(check="", scenario=scenario, message=message, users=[], op_ids=[])
