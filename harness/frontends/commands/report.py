"""`harness report DIR`: re-render report.html from a saved report folder (no server needed).

Reads the folder through `RunResult.load` (report.json of schema 1 or 2, history.jsonl), so old
runs can be re-rendered with a newer harness. A folder holding a selftest matrix (selftest.json,
no report.json) gets the matrix page instead. A run's folder with a history but no report.json
(the harness was killed before it finished) is judged from that history (`harness.salvage`,
never PASS) and gets every report file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.frontends.cli import command
from harness.reporters import write_all
from harness.reporters.html import ReportError, rerender, write_selftest_html
from harness.salvage import salvage


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("report_dir", type=Path, metavar="DIR",
                   help="a report folder (holding report.json, history.jsonl, reproducers/) or a selftest folder")


@command("report", _configure)
def report(args: argparse.Namespace) -> int:
    """Re-render DIR/report.html from a saved report folder and print its path (exit 2 if DIR is not one).
    A folder with history.jsonl but no report.json (a run killed before it finished) is judged from
    its history and gets every report file."""
    d: Path = args.report_dir
    try:
        if not (d / "report.json").is_file() and (d / "selftest.json").is_file():
            out = write_selftest_html(d)
        elif not (d / "report.json").is_file() and (d / "history.jsonl").is_file():
            result = write_all(salvage(d), d)
            print(f"{result.verdict.value.upper()}: {result.error}", file=sys.stderr)
            out = d / "report.html"
        else:
            out = rerender(d)
    except (ReportError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
