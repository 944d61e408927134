"""A verdict for a run whose harness never finished it (killed, even with SIGKILL).

The engine streams every record to `report_dir/history.jsonl` as it happens (docs/design.md,
"Incidents"), so a run whose harness process died keeps its history but has no report.json.
`salvage` judges that history with the same checks and the one verdict function, with the error
"the harness stopped before the run finished": such a run did not drive what it planned, so it
is never PASS (UNKNOWN, or FAIL where a check found a violation in what was recorded). The report
says where the history ends. No known findings are applied: a FAIL stays a FAIL to look at.
"""

from __future__ import annotations

from pathlib import Path

from harness.checks.base import CheckContext, run_checks
from harness.history.record import History, HistoryHeader, read_history
from harness.result import RunMeta, RunResult
from harness.verdict import decide

DEFAULT_POLICY = "shared-prefix"


class NothingToSalvage(ValueError):
    """The folder holds no history to judge."""


def salvage(folder: Path) -> RunResult:
    """The result of the run recorded in `folder/history.jsonl` (see the module docstring)."""
    path = Path(folder) / "history.jsonl"
    if not path.is_file():
        raise NothingToSalvage(f"{folder} holds neither report.json nor history.jsonl: not a run's folder")
    history = History(read_history(path, torn_tail_ok=True))
    header = next((r for r in history.records if isinstance(r, HistoryHeader)), HistoryHeader())
    ops = history.ops
    error = (f"the harness stopped before the run finished (no report.json): judged from the {len(ops)} "
             "request(s) of its streamed history")
    tolerance = header.tolerance or 0.0
    policy = header.policy or DEFAULT_POLICY
    results = run_checks(history, CheckContext(tolerance, policy)) if ops else []
    # Operation times are on the harness's own clock; the file was last written about when the
    # last recorded request completed, which dates the run.
    span = max((o.complete_s for o in ops), default=0.0) - min((o.invoke_s for o in ops), default=0.0)
    meta = RunMeta(harness_version=header.harness_version, target="(unknown: the run did not finish)",
                   embedded=bool(header.stack_owned), policy=policy, tolerance=tolerance,
                   started_unix=path.stat().st_mtime - span,
                   seeds={r.scenario: r.seed for r in history.runs if r.run == "main"},
                   duration_s=round(span, 1), requests=len(ops))
    meta.extra["salvaged"] = True
    return RunResult(decision=decide(results, error=error), known=[], history=history, meta=meta, scenarios=[],
                     skipped={}, error=error, report_dir=Path(folder))
