"""`harness report DIR`: re-render report.html from a saved report folder (no server needed).

Reads the folder through `RunResult.load` (report.json of schema 1 or 2, history.jsonl), so old
runs can be re-rendered with a newer harness. A folder holding a selftest matrix (selftest.json,
no report.json) gets the matrix page instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.frontends.cli import command
from harness.reporters.html import ReportError, rerender, write_selftest_html


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("report_dir", type=Path, metavar="DIR",
                   help="a report folder (holding report.json, history.jsonl, reproducers/) or a selftest folder")


@command("report", _configure)
def report(args: argparse.Namespace) -> int:
    """Re-render DIR/report.html from a saved report folder and print its path (exit 2 if DIR is not one)."""
    d: Path = args.report_dir
    try:
        if not (d / "report.json").is_file() and (d / "selftest.json").is_file():
            out = write_selftest_html(d)
        else:
            out = rerender(d)
    except (ReportError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
