"""Deprecated: the old orchestrator's names over the engine, for callers that have not moved yet.

Use `harness.engine.run(scenarios, stack, RunOptions(...)) -> RunResult` with
`harness.reporters.write_all` / `print_summary`, or `harness.frontends.runs.run_files` /
`run_and_report`, which do all three. `run_isolation` here returns a `RunResult`, which has every
attribute of the old `RunOutcome` (verdict, results, report, report_dir, error, exit_code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.engine import TargetUnreachable
from harness.frontends.runs import RunConfig, run_isolation
from harness.scenario.render import make_nonce
from harness.verdict import CheckResult, Verdict


@dataclass
class RunOutcome:
    """The old outcome type, for tests that build one by hand (a `RunResult` has the same attributes)."""

    verdict: Verdict
    results: list[CheckResult]
    report: dict[str, Any]
    report_dir: Path
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


__all__ = ["RunConfig", "RunOutcome", "TargetUnreachable", "make_nonce", "run_isolation"]
