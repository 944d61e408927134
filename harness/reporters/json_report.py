"""`report.json`: the verdict and its reasons, each check's evidence and the run's metadata,
machine-readable (schema version 2, see `harness.result`)."""

from __future__ import annotations

from pathlib import Path

from harness.result import RunResult


def write_json(result: RunResult, folder: Path) -> Path:
    """Write `folder/report.json`; returns its path."""
    return result.write_report_json(folder)
