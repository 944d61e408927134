"""`report.json`: the verdict, each check's evidence and the run's metadata, machine-readable."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.verdict import CheckResult, Verdict


def report_dict(verdict: Verdict, results: list[CheckResult], metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "verdict": verdict.value,
        "checks": [
            {
                "name": r.name,
                "description": r.description,
                "verdict": r.verdict.value,
                "exercised": r.exercised,
                "drift": r.drift,
                "violations": [asdict(v) for v in r.violations],
                "notes": r.notes,
            }
            for r in results
        ],
        "metadata": metadata,
    }


def write_json(path: Path, verdict: Verdict, results: list[CheckResult], metadata: dict[str, Any]) -> dict[str, Any]:
    data = report_dict(verdict, results, metadata)
    path.write_text(json.dumps(data, indent=2, default=str))
    return data
