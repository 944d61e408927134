"""Reporters: functions of a `RunResult` (docs/design.md, "The pipeline").

`write_all(result, folder)` writes reproducers/, report.json, junit.xml and report.html (in that
order: report.json lists the reproducers, the page embeds them); `print_summary(result, console)`
prints the console summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.reporters.console import print_summary
from harness.reporters.html import write_html
from harness.reporters.json_report import write_json
from harness.reporters.junit import write_junit
from harness.reporters.reproducer import write_reproducers
from harness.result import RunResult


def write_all(result: RunResult, folder: Path) -> RunResult:
    """Write every file report of `result` into `folder` (history.jsonl too, unless the engine
    streamed it there); returns `result`, now pointing at the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / "reproducers", ignore_errors=True)
    result.reproducers = write_reproducers(result, folder)
    result.save(folder)
    write_junit(result, folder)
    write_html(result, folder)
    return result


__all__ = ["print_summary", "write_all", "write_html", "write_json", "write_junit", "write_reproducers"]
